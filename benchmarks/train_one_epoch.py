#!/usr/bin/env python3
"""Scale of training on this CPU: resnet20_frelu, one epoch of the CIFAR-10 JPEG copy with the
CPU-budget recipe (its warm-up dropped, so the one epoch is one cosine cycle), then top-1 on the
JPEG test set and on the 1,000 lossless original test images.

    python benchmarks/train_one_epoch.py [--output output/bench]
"""
import argparse
import csv
import time
from pathlib import Path

from timm_frelu.measure import machine_description
from timm_frelu.train import main as train_main
from timm_frelu.validate import parser as validate_parser, validate

RECIPE = Path(__file__).resolve().parents[1] / 'zoo_configs' / 'cpu' / 'resnet20_frelu_cifar10.yaml'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--output', default='output/bench')
    args = parser.parse_args()
    experiment = time.strftime('%Y%m%d-%H%M%S') + '-resnet20_frelu-1epoch'
    start = time.perf_counter()
    status = train_main(['-c', str(RECIPE), '--dataset', 'shared/cifar10-jpeg', '--epochs', '1',
                         '--warmup-epochs', '0', '--model-ema-decay', '0.99',
                         '--output', args.output, '--experiment', experiment, '--log-interval', '100'])
    if status:
        raise SystemExit(status)
    wall = time.perf_counter() - start
    run = Path(args.output) / experiment
    with open(run / 'summary.csv') as f:
        row = next(csv.DictReader(f))
    lines = [f'machine: {machine_description()}',
             f'recipe {RECIPE.name} with --epochs 1 --warmup-epochs 0 --model-ema-decay 0.99, data shared/cifar10-jpeg train (50,000 images)',
             f'train: {float(row["train_img_per_sec"]):.1f} img/s, epoch {float(row["train_epoch_time"]):.0f} s, '
             f'whole run (data, train, eval, checkpoint) {wall:.0f} s']
    for dataset in ('shared/cifar10-jpeg', 'shared/cifar10-lossless'):
        results = validate(validate_parser.parse_args(
            ['--model', 'resnet20_frelu', '--checkpoint', str(run / 'last.pth.tar'), '--use-ema', '--dataset', dataset]))
        lines.append(f'top-1 of the EMA weights on {dataset}/test ({results["count"]} images): {results["top1"]:.2f} %')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
