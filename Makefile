# The README's two commands: `make main` and `make test`. Each installs what it needs first.
PYTHON ?= python3
PIP := PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 $(PYTHON) -m pip install --quiet

.PHONY: setup main test

# torch first and pinned: left to the resolver, a bare `torch` requirement can pull a different
# multi-GB build than the one this project is tested with.
setup:
	@$(PYTHON) -c 'import torch, torchvision' 2>/dev/null || $(PIP) torch==2.14.1 torchvision==0.29.1
	@$(PIP) -e '.[test]'

main: setup
	$(PYTHON) -m timm_frelu.cli main

test: setup
	$(PYTHON) -m pytest -q
