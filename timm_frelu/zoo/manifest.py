"""The manifest of published weights: one entry per ``<model>.<tag>``, made from the checkpoint
folders' ``results.json`` and ``recipe.yaml`` (``timm-frelu publish`` rewrites it), read by the
model registry to give exactly those tags weights."""
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from ..data.constants import DATASET_DESCRIPTIONS
from ..fileio import write_json_atomic
from .layout import RESULTS_FILENAME, ZooName, hub_repo_id, tag_dataset

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


def manifest_entry(folder: Path) -> PublishedWeights:
    """The manifest entry of one published checkpoint folder."""
    recipe_file = folder / 'recipe.yaml'
    recipe = yaml.safe_load(recipe_file.read_text()) if recipe_file.is_file() else {}
    config = json.loads((folder / 'config.json').read_text())
    return weights_entry(json.loads((folder / RESULTS_FILENAME).read_text()), recipe, config['num_classes'])


def weights_entry(results: Dict[str, Any], recipe: Dict[str, Any], num_classes: int) -> PublishedWeights:
    """The manifest entry of weights with these ``results.json`` and ``recipe.yaml`` contents."""
    zoo_name = ZooName.parse(results['model'])
    name, tag = zoo_name.model, zoo_name.tag
    metrics = [
        dict(data=f"{e['data']['dataset']}/{e['data']['split']}",
             description=DATASET_DESCRIPTIONS.get(e['data']['dataset'], e['data']['dataset']),
             images=e['count'], top1=round(e['top1'], 2), top5=round(e['top5'], 2))
        for e in results['evaluations'] if not e.get('tta_flip')]
    train_data = f"{recipe.get('dataset')}/{recipe.get('train_split', 'train')}" if recipe.get('dataset') else 'not recorded'
    return PublishedWeights(name=name, tag=tag, sha256=results['weights_sha256'], dtype=results['weights_dtype'],
                            num_classes=num_classes, epochs=recipe.get('epochs'), train_data=train_data,
                            metrics=metrics)


def build_manifest(checkpoints: Path) -> List[PublishedWeights]:
    """Entries for every published folder in ``checkpoints``. A model's longest-trained weights
    come first: timm makes a model's first tag with weights its default."""
    folders = sorted(results.parent for results in Path(checkpoints).glob(f'*/{RESULTS_FILENAME}'))
    # Dot folders are publish's staging and backup copies, never published weights.
    entries = [manifest_entry(folder) for folder in folders if not folder.name.startswith('.')]
    return sorted(entries, key=lambda e: (e.name, -(e.epochs or 0), e.tag))


def write_manifest(entries: List[PublishedWeights], path: Path = MANIFEST_FILE) -> bool:
    """Write the manifest; returns whether it changed."""
    payload = {'weights': [asdict(e) for e in entries]}
    if path.is_file() and json.loads(path.read_text()) == payload:
        return False
    write_json_atomic(path, payload)
    load_manifest.cache_clear()
    return True


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
