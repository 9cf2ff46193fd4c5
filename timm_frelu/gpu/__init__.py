"""The GPU zoo job: a plan trained on a lent GPU machine within its minutes, returned in parts that
fit what the machine may send back, then verified and published here. Tooling."""
