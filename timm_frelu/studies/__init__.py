"""Comparing activations and recipes: Optuna sweeps and their rank check, reports and figures, the
model and weights tables, speed measurements, and the FReLU visualization. Tooling."""
