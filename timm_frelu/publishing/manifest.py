"""The manifest of published weights, write side: its entries made from the published checkpoint
folders' ``results.json`` and ``recipe.yaml``, and the manifest file rewritten when they change."""
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List

import yaml

from ..fileio import write_json_atomic
from ..pretrained import RESULTS_FILENAME, ZooName
from ..pretrained.datasets import DATASET_DESCRIPTIONS
from ..pretrained.manifest import MANIFEST_FILE, PublishedWeights, load_manifest


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
