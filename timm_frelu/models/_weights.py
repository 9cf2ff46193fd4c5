"""Where the zoo's weights live: a Hugging Face Hub org, and a local folder that ships them."""
import os
from pathlib import Path
from typing import Optional

HF_HUB_ORG = 'timm-frelu'

# A source checkout keeps published weights in <repo>/checkpoints/<name>.<tag>/; installs from a
# wheel, or users with their own copy, point TIMM_FRELU_CHECKPOINTS at such a folder.
CHECKPOINTS_ENV = 'TIMM_FRELU_CHECKPOINTS'
WEIGHTS_FILENAME = 'model.safetensors'


def checkpoints_dir() -> Path:
    return Path(os.environ.get(CHECKPOINTS_ENV) or Path(__file__).resolve().parents[2] / 'checkpoints')


def hub_repo_id(name: str, tag: str) -> str:
    return f'{HF_HUB_ORG}/{name}.{tag}'


def shipped_weights(name: str, tag: str) -> Optional[str]:
    """Path of the weights file shipped for ``name.tag``, or None when there is none."""
    path = checkpoints_dir() / f'{name}.{tag}' / WEIGHTS_FILENAME
    return str(path) if path.is_file() else None
