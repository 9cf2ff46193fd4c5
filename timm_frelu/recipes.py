"""The training recipes shipped in ``zoo_configs/``, written from the tables below.

Each recipe is a YAML of ``timm_frelu.train`` argument defaults (``train -c FILE``). The files
are generated so that the dozens of study recipes cannot drift apart; ``timm-frelu recipes
--write zoo_configs`` rewrites them and a test checks they are current.
"""
from pathlib import Path
from typing import Dict, Iterator, Tuple

import yaml

from .data.constants import CIFAR_NUM_CLASSES
from .models import ACTS

STUDY_ARCHS = ('resnet18', 'resnet34', 'resnet50')
CPU_ARCHS = ('resnet20', 'resnet32', 'resnet44', 'resnet56')
DATASETS = ('cifar10', 'cifar100')

STUDY_NOTE = (
    'The 2020 reproducibility study\'s recipe: 200 epochs of SGD with classical momentum 0.9, lr 0.1,\n'
    'weight decay 5e-4, batch 128, lr x0.1 at epochs 100 and 150; pad-4 crop and flip. Sized for a GPU.')
STUDY_RECIPE = dict(
    epochs=200, opt='momentum', momentum=0.9, lr=0.1, weight_decay=5e-4, batch_size=128,
    sched='multistep', decay_milestones=[100, 150], decay_rate=0.1, warmup_epochs=0,
    crop_padding=4, hflip=0.5,
)

CPU_NOTE = (
    'CPU budget: 30 epochs, under 2 hours of a 2-core CPU for resnet20 (benchmarks/train_one_epoch.py\n'
    'times one epoch; deeper nets take proportionally longer). Short runs gain most from a cosine\n'
    'schedule with a short warm-up, Nesterov momentum, label smoothing and an EMA of the weights that\n'
    'is evaluated and saved.')
CPU_RECIPE = dict(
    epochs=30, opt='sgd', momentum=0.9, lr=0.1, weight_decay=5e-4, batch_size=128,
    sched='cosine', warmup_epochs=1, warmup_lr=0.01, min_lr=0.0, smoothing=0.1,
    model_ema=True, model_ema_decay=0.999, model_ema_warmup=True,
    crop_padding=4, hflip=0.5,
)


def recipes() -> Iterator[Tuple[str, str, Dict]]:
    """(relative path, header comment, arguments) of every shipped recipe."""
    for group, archs, activations, note, recipe in (
            ('study', STUDY_ARCHS, ACTS, STUDY_NOTE, STUDY_RECIPE),
            ('cpu', CPU_ARCHS, ACTS, CPU_NOTE, CPU_RECIPE)):
        for arch in archs:
            for act in activations:
                for dataset in DATASETS:
                    model = f'{arch}_{act}'
                    args = dict(model=f'{model}.{dataset}', dataset=f'torch/{dataset}',
                                num_classes=CIFAR_NUM_CLASSES[dataset], **recipe)
                    yield f'{group}/{model}_{dataset}.yaml', note, args


def render(note: str, args: Dict) -> str:
    comment = ''.join(f'# {line}\n' for line in note.splitlines())
    return comment + yaml.safe_dump(args, sort_keys=False)


def write_recipes(root: Path) -> int:
    """Write every recipe under ``root``; returns how many files changed."""
    changed = 0
    for rel, note, args in recipes():
        path = root / rel
        text = render(note, args)
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed += 1
    return changed
