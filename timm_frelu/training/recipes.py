"""The training recipes shipped in ``zoo_configs/``, written from the tables below.

Each recipe is a YAML of ``timm_frelu.train`` argument defaults (``train -c FILE``). The files
are generated so that the dozens of study recipes cannot drift apart; ``timm-frelu recipes
--write zoo_configs`` rewrites them and a test checks they are current.
"""
from pathlib import Path
from typing import Dict, Iterator, Tuple

import yaml

from ..models import ACTS
from ..pretrained.datasets import CIFAR_NUM_CLASSES

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
    'is evaluated and saved. bf16 autocast where the CPU computes it natively (AMX, AVX512_BF16), else fp32.')
CPU_RECIPE = dict(
    epochs=30, opt='sgd', momentum=0.9, lr=0.1, weight_decay=5e-4, batch_size=128,
    sched='cosine', warmup_epochs=1, warmup_lr=0.01, min_lr=0.0, smoothing=0.1,
    model_ema=True, model_ema_decay=0.999, model_ema_warmup=True,
    crop_padding=4, hflip=0.5, amp_if_native=True,
)

# The study's networks on a CPU budget (30 epochs; 20 for ResNet-34/50, whose bf16 epoch on an AMX
# Xeon takes 2-3x ResNet-18's, benchmarks/perf.py): the study's SGD family (momentum 0.9, lr 0.1 at batch 128,
# weight decay 5e-4, pad-4 crop and flip) with what short schedules need, taken from the
# literature rather than searched: a cosine decay to zero stepped every update after a one-epoch
# warm-up (Loshchilov and Hutter, SGDR; Goyal et al. for the warm-up), label smoothing 0.1
# (Szegedy et al.; Mueller et al.) and an EMA of the weights, evaluated and published
# (Polyak averaging, as timm's recipes do). The lr stays the study's 0.1: the tuned200 lesson is
# that an lr searched for one budget can be wrong at another, and 0.1 at batch 128 is the value
# ResNet-18/34/50 CIFAR recipes share at 30 to 200 epochs.
CPU_STUDY_EPOCHS = {'resnet18': 30, 'resnet34': 20, 'resnet50': 20}
CPU_STUDY_ACTS = ('frelu', 'relu')
CPU_STUDY_NOTE = (
    'The study\'s networks on a CPU budget of {epochs} epochs: the study\'s SGD family (Nesterov momentum 0.9, lr 0.1 at\n'
    'batch 128, weight decay 5e-4, pad-4 crop and flip) with a cosine decay to zero stepped every update after\n'
    'a one-epoch warm-up, label smoothing 0.1, and an EMA of the weights that is evaluated and published.\n'
    'Taken from the literature, not searched (see timm_frelu/training/recipes.py). bf16 autocast where the CPU computes\n'
    'it natively (AMX, AVX512_BF16), else fp32; channels_last runs FReLU on its fused CPU kernels.')
CPU_STUDY_RECIPE = dict(
    opt='sgd', momentum=0.9, lr=0.1, weight_decay=5e-4, batch_size=128,
    sched='cosine', sched_on_updates=True, warmup_epochs=1, warmup_lr=0.0, min_lr=0.0, smoothing=0.1,
    model_ema=True, model_ema_decay=0.999, model_ema_warmup=True,
    crop_padding=4, hflip=0.5, channels_last=True, amp_if_native=True,
)

# The recipe study (docs/recipe-study/) searched a 10-epoch proxy of the CPU budget on ResNet-20,
# with ReLU and with FReLU, around what both sweeps fixed:
TUNED_PROXY_EPOCHS = 10
TUNED_FIXED = dict(
    opt='sgd', momentum=0.9, lr_base_size=256, sched_on_updates=True, decay_rate=1.0, warmup_lr=0.0, min_lr=0.0,
    model_ema=True, model_ema_warmup=True, crop_padding=4, hflip=0.5, channels_last=True,
)
TUNED_NOTE = (
    'The recipe study\'s choice (docs/recipe-study/), at {epochs} epochs: searched in {proxy}-epoch proxy runs of\n'
    'ResNet-20 with ReLU and with FReLU, chosen by their mean. The schedule keeps its shape at any length:\n'
    'the warm-up takes the same share of it. lr is --lr-base at batch 256, scaled linearly to the batch\n'
    'size; the lr steps every update (poly with power 1 is a linear decay to zero); Nesterov SGD; weights\n'
    'evaluated and saved as their EMA. channels_last runs FReLU on its fused CPU kernels.')
# The configuration with the best mean of the two proxies (ReLU trial 14, FReLU trial 16: 85.04 and
# 85.04 held-out top-1), as the studies stored it; tests/tooling/test_recipes.py checks it against them.
TUNED_CHOICE = dict(
    lr_base=1.0311304743677796, batch_size=128, sched='poly', warmup_epochs=1, smoothing=0.09509953128537293,
    weight_decay=0.000281904212826914, weight_decay_exclude='norm_bias', model_ema_decay=0.998,
)
# 30: the CPU budget it was searched for. 200: the flagships of issue "Zoo, part 2", the same schedule stretched.
TUNED_EPOCHS = (30, 200)


def tuned_recipe(epochs: int) -> Dict:
    """The recipe study's choice stretched to ``epochs``."""
    recipe = dict(epochs=epochs, **TUNED_FIXED, **TUNED_CHOICE)
    recipe['warmup_epochs'] = round(TUNED_CHOICE['warmup_epochs'] * epochs / TUNED_PROXY_EPOCHS)
    return recipe


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
    for arch, epochs in CPU_STUDY_EPOCHS.items():
        for act in CPU_STUDY_ACTS:
            model = f'{arch}_{act}'
            args = dict(model=f'{model}.cifar10', dataset='torch/cifar10', num_classes=10, epochs=epochs, **CPU_STUDY_RECIPE)
            yield f'cpu/cpu{epochs}/{model}_cifar10.yaml', CPU_STUDY_NOTE.format(epochs=epochs), args
    for epochs in TUNED_EPOCHS:
        note = TUNED_NOTE.format(epochs=epochs, proxy=TUNED_PROXY_EPOCHS)
        for act in ACTS:
            model = f'resnet20_{act}'
            args = dict(model=f'{model}.cifar10', dataset='torch/cifar10', num_classes=10, **tuned_recipe(epochs))
            yield f'cpu/tuned{epochs}/{model}_cifar10.yaml', note, args


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
