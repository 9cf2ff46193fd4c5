"""The README's main job, on an embedded default.

With a shipped ``resnet20_frelu.cifar10`` checkpoint, it validates that file on the CIFAR-10
test data at hand. Until one exists, it trains ``resnet20_frelu`` for a few CPU minutes on the
4,000 original CIFAR-10 training images of the shared lossless subset and validates the result.
Test data: torchvision's CIFAR-10 when it is in the data folder, and the shared offline copies.
"""
import json
import time
from pathlib import Path

from .data import DataError
from .zoo import shipped_weights
from .train import main as train_main
from .fileio import write_json_atomic
from .validate import format_results, parser as validate_parser, validate

DEFAULT_MODEL, DEFAULT_TAG = 'resnet20_frelu', 'cifar10'
QUICK_TRAINING = [
    '--model', f'{DEFAULT_MODEL}.{DEFAULT_TAG}', '--dataset', 'shared/cifar10-lossless', '--val-split', 'test',
    '--epochs', '8', '--opt', 'sgd', '--lr', '0.1', '--weight-decay', '5e-4', '--batch-size', '64',
    '--sched', 'cosine', '--warmup-epochs', '1', '--warmup-lr', '0.01', '--smoothing', '0.1', '--seed', '0',
    '--log-interval', '20',
]
TEST_SETS = ('torch/cifar10', 'shared/cifar10-jpeg', 'shared/cifar10-lossless')


def run(output_root: str = 'output/main') -> int:
    out = Path(output_root) / time.strftime('%Y%m%d-%H%M%S')
    weights = shipped_weights(DEFAULT_MODEL, DEFAULT_TAG)
    if weights:
        print(f'[main] validating the shipped checkpoint {weights}')
        model_args = ['--model', f'{DEFAULT_MODEL}.{DEFAULT_TAG}', '--pretrained']
    else:
        print(f'[main] no shipped {DEFAULT_MODEL}.{DEFAULT_TAG} checkpoint yet: a short training run, then validation')
        status = train_main(QUICK_TRAINING + ['--output', str(out), '--experiment', 'train'])
        if status:
            return status
        model_args = ['--model', DEFAULT_MODEL, '--checkpoint', str(out / 'train' / 'last.pth.tar')]
    summary = {}
    for dataset in TEST_SETS:
        try:  # validate loads the data once; a test set that is not here is skipped
            results = validate(validate_parser.parse_args(model_args + ['--dataset', dataset]))
        except DataError as err:
            print(f'[main] skipping {dataset}: {str(err).splitlines()[0][:160]}')
            continue
        name = dataset.replace('/', '_')
        write_json_atomic(out / f'results-{name}.json', results)
        print(format_results(results) + '\n')
        summary[dataset] = round(results['top1'], 2)
    print('[main] top-1 (%) by test data: ' + json.dumps(summary))
    print(f'[main] outputs in {out.resolve()}')
    return 0
