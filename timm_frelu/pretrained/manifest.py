"""The manifest of published weights, read side: one entry per ``<model>.<tag>``, read by the model
registry to give exactly those tags weights. ``timm-frelu publish`` writes it
(``timm_frelu.publishing.manifest``)."""
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional

from .names import hub_repo_id, tag_dataset

MANIFEST_FILE = Path(__file__).with_name('manifest.json')
# The pretrained-config fields that describe one set of weights (PublishedWeights.pretrained_cfg_fields).
WEIGHTS_CFG_FIELDS = ('origin_url', 'description', 'notes')


@dataclass(frozen=True)
class PublishedWeights:
    """One published weight and its facts, as torchvision's weights ``meta``."""
    name: str  # the model, e.g. resnet20_frelu
    tag: str  # <recipe>_<dataset>, e.g. gpu_cifar10
    sha256: str  # of model.safetensors
    dtype: str
    num_classes: int
    epochs: Optional[int]
    train_data: str  # dataset/split it was trained on
    metrics: List[Dict[str, Any]] = field(default_factory=list)  # [{data, description, images, top1, top5}]
    license: str = 'apache-2.0'

    @property
    def name_tag(self) -> str:
        return f'{self.name}.{self.tag}'

    @property
    def hf_hub_id(self) -> str:
        return hub_repo_id(self.name, self.tag)

    @property
    def dataset(self) -> str:
        return tag_dataset(self.tag)

    def pretrained_cfg_fields(self) -> Dict[str, Any]:
        """What a pretrained config says of these weights: where they are published, how they
        were trained, what they score."""
        return dict(
            origin_url=f'https://huggingface.co/{self.hf_hub_id}',
            description=f'{self.epochs} epochs on {self.train_data}; SHA256 {self.sha256}',
            notes=tuple(f"top-1 {m['top1']:.2f}% on {m['description']} ({m['data']})" for m in self.metrics),
        )


@lru_cache(maxsize=None)
def load_manifest(path: Path = MANIFEST_FILE) -> tuple:
    if not path.is_file():
        return ()
    return tuple(PublishedWeights(**entry) for entry in json.loads(path.read_text())['weights'])


def published_weights(name: Optional[str] = None) -> List[PublishedWeights]:
    """Every published weight, or those of model ``name``."""
    return [e for e in load_manifest() if name is None or e.name == name]


def find_weights(name: str, tag: str) -> Optional[PublishedWeights]:
    return next((e for e in load_manifest() if e.name == name and e.tag == tag), None)
