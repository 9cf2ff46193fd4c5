"""Where published weights live: the checkpoints folder, its per-weight folders and the Hub repos."""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .datasets import CIFAR_NUM_CLASSES

HF_HUB_ORG = 'timm-frelu'
CHECKPOINTS_ENV = 'TIMM_FRELU_CHECKPOINTS'
WEIGHTS_FILENAME = 'model.safetensors'
RESULTS_FILENAME = 'results.json'
# The repository root when the package runs from a source checkout (its pyproject.toml beside it).
SOURCE_CHECKOUT = Path(__file__).resolve().parents[2]


def checkpoints_dir() -> Optional[Path]:
    """``$TIMM_FRELU_CHECKPOINTS``, else ``checkpoints/`` of the source checkout this package runs
    from; None for an installed wheel, which downloads its weights from the Hub."""
    env = os.environ.get(CHECKPOINTS_ENV)
    if env:
        return Path(env)
    if (SOURCE_CHECKOUT / 'pyproject.toml').is_file() and (SOURCE_CHECKOUT / 'checkpoints').is_dir():
        return SOURCE_CHECKOUT / 'checkpoints'
    return None


@dataclass(frozen=True)
class ZooName:
    """A zoo name, ``<arch>_<act>`` with an optional tag ``<recipe>_<dataset>`` (or ``<dataset>``),
    as timm spells model names: ``resnet20_frelu.tuned30_cifar10``. The one parser of them."""
    arch: str
    act: str
    tag: Optional[str] = None

    @classmethod
    def parse(cls, name: str) -> 'ZooName':
        model, _, tag = name.partition('.')
        arch, _, act = model.rpartition('_')
        return cls(arch, act, tag or None)

    @property
    def model(self) -> str:
        return f'{self.arch}_{self.act}'

    @property
    def dataset(self) -> Optional[str]:
        return tag_dataset(self.tag) if self.tag else None

    def __str__(self) -> str:
        return f'{self.model}.{self.tag}' if self.tag else self.model


def hub_repo_id(name: str, tag: str) -> str:
    return f'{HF_HUB_ORG}/{name}.{tag}'


def tag_dataset(tag: str) -> str:
    """The dataset a tag's weights are for: its last ``_`` part (``gpu_cifar10`` -> ``cifar10``)."""
    dataset = tag.rsplit('_', 1)[-1]
    if dataset not in CIFAR_NUM_CLASSES:
        raise ValueError(
            f'The tag {tag!r} names no dataset: end it with one of {sorted(CIFAR_NUM_CLASSES)}, as in '
            f"timm's <recipe>_<dataset> tags (e.g. gpu_cifar10).")
    return dataset


def shipped_weights(name: str, tag: str) -> Optional[Path]:
    """The weights file of ``name.tag`` in the local checkpoints folder, or None."""
    folder = checkpoints_dir()
    path = folder / f'{name}.{tag}' / WEIGHTS_FILENAME if folder else None
    return path if path is not None and path.is_file() else None


def published_sha256(folder: Path) -> Optional[str]:
    results = Path(folder) / RESULTS_FILENAME
    return json.loads(results.read_text()).get('weights_sha256') if results.is_file() else None
