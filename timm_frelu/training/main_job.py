"""The README's main job, on an embedded default.

With a shipped ``resnet20_frelu.cifar10`` checkpoint, it validates that file on the CIFAR-10
test data at hand. Until one exists, it trains ``resnet20_frelu`` for a few CPU minutes on the
4,000 original CIFAR-10 training images of the shared lossless subset and validates the result.
Test data: torchvision's CIFAR-10 when it is in the data folder, and the shared offline copies.
"""
import json
import time
from pathlib import Path

from timm.models import get_pretrained_cfg

from ..fileio import write_json_atomic
from ..pretrained import shipped_weights
from .data import DataError
from .run_folder import LAST_CHECKPOINT
from .train import train, training_args
from .validate import format_results, validate, validation_args

DEFAULT_MODEL = 'resnet20_frelu'
QUICK_TRAINING = dict(
    model=f'{DEFAULT_MODEL}.cifar10', dataset='shared/cifar10-lossless', val_split='test', epochs=8, opt='sgd',
    lr=0.1, weight_decay=5e-4, batch_size=64, sched='cosine', warmup_epochs=1, warmup_lr=0.01, smoothing=0.1,
    seed=0, log_interval=20,
)
TEST_SETS = ('torch/cifar10', 'shared/cifar10-jpeg', 'shared/cifar10-lossless')


class NothingValidated(DataError):
    """None of the test sets could be read."""


def default_tag() -> str:
    """The tag ``resnet20_frelu`` resolves to: its longest-trained published weights."""
    return get_pretrained_cfg(DEFAULT_MODEL).tag


def run(output_root: str = 'output/main') -> int:
    out = Path(output_root) / time.strftime('%Y%m%d-%H%M%S')
    tag = default_tag()
    name = f'{DEFAULT_MODEL}.{tag}'
    weights = shipped_weights(DEFAULT_MODEL, tag)
    if weights:
        print(f'[main] validating the shipped checkpoint {weights}')
        model = dict(model=name, pretrained=True)
    else:
        print(f'[main] no shipped {name} checkpoint yet: a short training run, then validation')
        run_dir = train(training_args(**QUICK_TRAINING, output=str(out), experiment='train'))
        model = dict(model=DEFAULT_MODEL, checkpoint=str(run_dir / LAST_CHECKPOINT))
    summary, skipped = {}, []
    for dataset in TEST_SETS:
        try:  # validate loads the data once; a test set that is not here is skipped
            results = validate(validation_args(**model, dataset=dataset))
        except DataError as err:
            print(f'[main] skipping {dataset}: {err}')
            skipped.append(dataset)
            continue
        write_json_atomic(out / f"results-{dataset.replace('/', '_')}.json", results)
        print(format_results(results) + '\n')
        summary[dataset] = round(results['top1'], 2)
    if not summary:
        raise NothingValidated(
            f'No test data was found, so nothing was validated (looked for {", ".join(skipped)}; the reasons are '
            f'above). Put the shared data folder beside this checkout (../shared/data) or set '
            f'$TIMM_FRELU_SHARED_DATA, or put torchvision\'s CIFAR-10 in ./data.')
    print('[main] top-1 (%) by test data: ' + json.dumps(summary))
    print(f'[main] outputs in {out.resolve()}')
    return 0
