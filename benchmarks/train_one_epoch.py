#!/usr/bin/env python3
"""Training on this CPU, in the real training loop (real data, on-device augmentation, the
optimizer, EMA and checkpoint): one epoch of the CIFAR-10 JPEG copy with the model's CPU recipe.

By default resnet20_frelu, a whole epoch (its warm-up dropped, so the one epoch is one cosine
cycle), then top-1 on the JPEG test set and on the 1,000 lossless original test images. With
``--images N`` only the first N training images and no evaluation: the loop's img/s, for
models whose whole epoch takes long. ``--precision fp32 bf16`` runs each in turn (bf16: autocast,
``--amp``) and prints their ratio.

    python benchmarks/train_one_epoch.py [--model resnet20_frelu] [--images N] [--precision fp32 bf16] [--output output/bench]
"""
import argparse
import csv
import time
from pathlib import Path

from timm_frelu.studies.measure import machine_description
from timm_frelu.training.train import main as train_main
from timm_frelu.training.validate import parser as validate_parser
from timm_frelu.training.validate import validate

RECIPES = Path(__file__).resolve().parents[1] / 'zoo_configs' / 'cpu'
PRECISION_FLAGS = {'fp32': ['--no-amp-if-native'], 'bf16': ['--amp']}


def recipe(model: str) -> Path:
    """The model's CPU recipe: the study networks' (cpu30/, cpu20/), else the CPU-budget one."""
    for path in [*sorted(RECIPES.glob(f'cpu[0-9]*/{model}_cifar10.yaml')), RECIPES / f'{model}_cifar10.yaml']:
        if path.is_file():
            return path
    raise SystemExit(f'No CPU recipe for {model} in {RECIPES}.')


def train_epoch(model: str, precision: str, images: int, output: str) -> Path:
    experiment = f'{time.strftime("%Y%m%d-%H%M%S")}-{model}-{precision}-1epoch'
    subset = ['--train-split', f'train[:{images}]', '--val-split', ''] if images else []
    status = train_main(['-c', str(recipe(model)), '--model', model, '--dataset', 'shared/cifar10-jpeg', '--epochs', '1',
                         '--warmup-epochs', '0', '--model-ema-decay', '0.99', *subset, *PRECISION_FLAGS[precision],
                         '--output', output, '--experiment', experiment, '--log-interval', '100'])
    if status:
        raise SystemExit(status)
    return Path(output) / experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='resnet20_frelu')
    parser.add_argument('--images', type=int, default=0, help='train on the first N images only, without evaluation')
    parser.add_argument('--precision', nargs='+', choices=tuple(PRECISION_FLAGS), default=['fp32'])
    parser.add_argument('--output', default='output/bench')
    args = parser.parse_args()
    lines = [f'machine: {machine_description()}',
             f'recipe {recipe(args.model).relative_to(RECIPES.parents[1])} with --epochs 1 --warmup-epochs 0 '
             f'--model-ema-decay 0.99, data shared/cifar10-jpeg train '
             + (f'[:{args.images}]' if args.images else '(50,000 images)')]
    speed = {}
    for precision in args.precision:
        start = time.perf_counter()
        run = train_epoch(args.model, precision, args.images, args.output)
        wall = time.perf_counter() - start
        with open(run / 'summary.csv') as f:
            row = next(csv.DictReader(f))
        speed[precision] = float(row['train_img_per_sec'])
        lines.append(f'{args.model} {precision}: train {speed[precision]:.1f} img/s, epoch {float(row["train_epoch_time"]):.0f} s, '
                     f'whole run (data, train, eval, checkpoint) {wall:.0f} s')
        if not args.images:
            for dataset in ('shared/cifar10-jpeg', 'shared/cifar10-lossless'):
                results = validate(validate_parser.parse_args(
                    ['--model', args.model, '--checkpoint', str(run / 'last.pth.tar'), '--use-ema', '--dataset', dataset]))
                lines.append(f'  top-1 of the EMA weights on {dataset}/test ({results["count"]} images): '
                             f'{results["top1"]:.2f} %')
    if len(speed) == 2:
        lines.append(f'{args.model}: bf16 trains {speed["bf16"] / speed["fp32"]:.2f}x as fast as fp32')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
