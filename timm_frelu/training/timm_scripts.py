"""Run one of timm's own scripts (train.py, validate.py, inference.py, benchmark.py) with the
plugin's models registered.

timm's scripts build models by name from timm's registry, which knows this plugin's models only
once ``timm_frelu`` is imported; the scripts themselves never import it. This runs the script
unchanged, as ``python SCRIPT ARGS`` would, after that import:

    timm-frelu run train.py --model resnet20_frelu --pretrained --num-classes 5 --data-dir DATA --device cpu
    python -m timm_frelu.run validate.py --model resnet20_frelu --pretrained --data-dir DATA --split test
"""
import argparse
import runpy
import sys
from pathlib import Path
from typing import List, Optional

USAGE = ('usage: timm-frelu run SCRIPT [ARGS...]\n\n'
         "Runs SCRIPT (one of timm's train.py, validate.py, inference.py, benchmark.py) with the FReLU models\n"
         'registered; ARGS go to the script unchanged (SCRIPT --help lists them).')


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(USAGE)
        return 0 if argv else 2
    script = Path(argv[0])
    if not script.is_file():
        print(f'error: no script at {script}. Give the path of a timm script, e.g. '
              f'pytorch-image-models/train.py from a clone of timm\'s repository.', file=sys.stderr)
        return 2
    if script.name == 'train.py':
        _warn_if_no_full_batch(argv[1:])
    import timm_frelu  # noqa: F401  registers the models before the script looks them up

    # As `python SCRIPT ARGS`: the script's folder first on the path, its name as argv[0].
    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.resolve().parent))
    try:
        runpy.run_path(str(script), run_name='__main__')
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0


def _warn_if_no_full_batch(args: List[str]) -> None:
    """timm's train.py drops a training split's last partial batch, so a folder with fewer images than
    the batch trains nothing, silently, and exits 0: say so before it runs."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('data', nargs='?')
    parser.add_argument('--data-dir')
    parser.add_argument('--dataset', default='')
    parser.add_argument('--train-split', default='train')
    parser.add_argument('-b', '--batch-size', type=int, default=128)  # train.py's default
    known, _ = parser.parse_known_args(args)
    data_dir = known.data_dir or known.data
    if not data_dir or known.dataset not in ('', 'folder') and not known.dataset.startswith('folder/'):
        return
    folder = Path(data_dir) / known.train_split
    if not folder.is_dir():
        return
    from .data.sources import IMAGE_SUFFIXES  # the suffixes the project's image folders read
    count = sum(1 for path in folder.rglob('*') if path.suffix.lower() in IMAGE_SUFFIXES)
    if count < known.batch_size:
        print(f'warning: {folder} holds {count} training images, fewer than the batch of {known.batch_size}: timm\'s '
              f'train.py drops the last partial batch, so it would train nothing. Pass -b {max(count // 2, 1)} '
              f'(a batch that fits at least twice) or a smaller one.', file=sys.stderr)

