import os

# No test may reach the internet; the hub client reads this when it is first imported.
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import pytest  # noqa: E402
import torch  # noqa: E402

import timm_frelu  # noqa: E402,F401  registers the models and the activation


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
