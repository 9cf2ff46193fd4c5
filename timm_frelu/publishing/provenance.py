"""What a published checkpoint says about the run behind it: its arguments without anything
local to the machine it ran on, the command that repeats it, and a plain description of its data."""
import shlex
from pathlib import Path
from typing import Any, Dict, Optional

from ..pretrained import SOURCE_CHECKOUT
from ..pretrained.datasets import DATASET_DESCRIPTIONS

# Where and how a run ran, not what it trained: left out of a published recipe.
RUN_LOCAL_KEYS = ('resume', 'no_resume_opt', 'output', 'experiment', 'data_dir', 'dataset_download', 'device',
                  'dist_backend', 'dist_url', 'distributed', 'world_size', 'rank', 'local_rank', 'threads',
                  'log_interval', 'log_wandb', 'checkpoint_hist', 'recovery_interval')
# Paths that matter to what was trained: kept as the file's name.
PATH_KEYS = ('config', 'initial_checkpoint', 'pretrained_path')
# The Hub dataset each is (a copy of), for model cards' metadata, and the data in words.
TRAINING_DATASETS = {
    'shared/cifar10-jpeg': ('uoft-cs/cifar10', 'the CIFAR-10 training set as a lossy JPEG copy (quality ~75; not the official pixels)'),
    'shared/cifar10-lossless': ('uoft-cs/cifar10', 'the first 4,000 CIFAR-10 training images, original pixels'),
    'torch/cifar10': ('uoft-cs/cifar10', 'the official CIFAR-10 training set (torchvision)'),
    'torch/cifar100': ('uoft-cs/cifar100', 'the official CIFAR-100 training set (torchvision)'),
}
# The part of the Hub dataset's split that a test folder holds, in `datasets`' slice notation. A
# model-index groups results by dataset and split, so without it the 1,000 original test images'
# top-1 would be filed under the JPEG test set's name.
HUB_SPLIT_SLICES = {('shared/cifar10-lossless', 'test'): 'test[:1000]'}


def portable_source(source: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """A data source record (``ImageSet.source``) without local paths: the archive by file name."""
    if not source:
        return source
    portable = {k: v for k, v in source.items() if k != 'path'}
    if portable.get('archive'):
        portable['archive'] = Path(portable['archive']).name
    return portable


def portable_args(run_args: Dict[str, Any]) -> Dict[str, Any]:
    """A run's ``args.yaml`` as a recipe anyone can read: no machine paths, no run-local options."""
    args = {k: v for k, v in run_args.items() if k not in RUN_LOCAL_KEYS}
    for key in PATH_KEYS:
        if args.get(key):
            args[key] = _repo_relative(args[key])
    for key in ('train_data', 'eval_data'):
        if key in args:
            args[key] = portable_source(args[key])
    return args


def _repo_relative(path: str) -> str:
    """A path inside this repository relative to its root (``zoo_configs/...``), else its name."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(SOURCE_CHECKOUT)) if resolved.is_relative_to(SOURCE_CHECKOUT) else Path(path).name


def reproduce_command(run_args: Dict[str, Any]) -> str:
    """``python -m timm_frelu.train ...``: the recipe file, then every training argument whose value
    the run had and the recipe and defaults do not, so that the command repeats the run."""
    from ..training.train import build_parser, training_args
    args = portable_args(run_args)
    config = args.get('config')
    base = vars(training_args(SOURCE_CHECKOUT / config if config and (SOURCE_CHECKOUT / config).is_file() else None))
    parts = ['python', '-m', 'timm_frelu.train'] + (['-c', config] if config else [])
    # A restart's weights and epoch were the run's way on, not its recipe: the command trains it unbroken.
    restarted = args.get('start_epoch') in {restart['epoch'] for restart in args.get('restarts') or []}
    for action in build_parser()._actions:
        key = action.dest
        if key in ('help', 'config') or key not in args or key in RUN_LOCAL_KEYS or args[key] == base.get(key):
            continue
        if restarted and key in ('initial_checkpoint', 'start_epoch'):
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith('--') else action.option_strings[0]
        value = args[key]
        if action.nargs == 0:  # store_true / store_false
            if value != action.default:
                parts.append(flag)
        elif isinstance(value, dict):
            parts += [flag, *(f'{k}={v}' for k, v in value.items())]
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        elif value is not None:
            parts += [flag, str(value)]
    if args.get('dataset') == 'folder':
        parts += ['--data-dir', 'YOUR_IMAGE_FOLDER']  # the run's own folder is a path on its machine
    return shlex.join(parts)


def describe_training_data(run_args: Dict[str, Any]) -> str:
    """What the run trained on, in words: the dataset, the split, and how many images."""
    dataset = run_args.get('dataset') or 'an unrecorded dataset'
    split = run_args.get('train_split', 'train')
    count = (run_args.get('train_data') or {}).get('num_images')
    words = TRAINING_DATASETS.get(dataset, (None, 'an image folder' if dataset == 'folder' else f'`{dataset}`'))[1]
    return f'{words}, split `{split}`' + (f', {count:,} images' if count else '')


def dataset_id(dataset: Optional[str]) -> Optional[str]:
    """The Hub dataset id (``uoft-cs/cifar10``) of one of the project's dataset names, when it is a known one."""
    return TRAINING_DATASETS.get(dataset, (None, None))[0]


def hub_split(data: Dict[str, Any]) -> str:
    """The Hub split (or the slice of one) that a test data record is: ``test[:1000]``, ``test``."""
    return HUB_SPLIT_SLICES.get((data.get('dataset'), data.get('split')), data.get('split'))


def describe_test_data(data: Dict[str, Any]) -> str:
    """A test set in words for readers of a card: the whole description for a test split."""
    if data.get('split') == 'test' and data.get('dataset') in DATASET_DESCRIPTIONS:
        return DATASET_DESCRIPTIONS[data['dataset']]
    return f"{data.get('dataset')}, split {data.get('split')}"
