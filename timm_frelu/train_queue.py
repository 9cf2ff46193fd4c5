"""A queue of training runs that outlives sessions: the same command, run again, goes on.

A queue is a YAML file:

    output: output/zoo                      # parent of the run folders (relative to the cwd)
    defaults: {channels_last: true}         # training arguments every run shares (optional)
    runs:
      - {experiment: r30-resnet20_frelu-s0, config: zoo_configs/cpu/resnet20_frelu_cifar10.yaml, args: {seed: 0}}
      - {experiment: r30-resnet20_relu-s0, config: zoo_configs/cpu/resnet20_relu_cifar10.yaml, args: {seed: 0}}

``timm-frelu train-queue QUEUE.yaml`` trains the runs in order with the training command's own code,
each into ``<output>/<experiment>/``. A run whose last epoch is in its ``summary.csv`` is done and
skipped; one with a ``last.pth.tar`` is resumed from it (the training command's exact resume);
others start. So a killed queue, or one cut off when a session ends, continues where it stopped
when the command runs again. Several workers (one per core, say, each with ``threads: 1``) can
run one queue at once: each run is locked while one trains it, the others take the next.
"""
import argparse
import csv
import fcntl
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import yaml

from .train import check_args, train, training_args

_logger = logging.getLogger('train_queue')


class QueueError(ValueError):
    pass


def load_queue(path: Path) -> Dict[str, Any]:
    spec = yaml.safe_load(Path(path).read_text()) or {}
    runs = spec.get('runs')
    if not isinstance(runs, list) or not runs:
        raise QueueError(f'{path} has no runs; see `timm_frelu.train_queue` for the queue file format.')
    names = [run.get('experiment') for run in runs]
    if not all(names):
        raise QueueError(f'{path}: every run needs an experiment name (its folder under output).')
    if len(set(names)) != len(names):
        raise QueueError(f'{path}: experiment names repeat; each run needs a folder of its own.')
    return spec


def run_args(spec: Dict[str, Any], run: Dict[str, Any], output: Path) -> argparse.Namespace:
    """The run's training arguments: its recipe, the queue's defaults, its own, and where it goes."""
    overrides = {**(spec.get('defaults') or {}), **(run.get('args') or {})}
    try:
        args = training_args(run.get('config'), **overrides, output=str(output), experiment=run['experiment'])
        check_args(args)
    except ValueError as err:
        raise QueueError(f"run {run['experiment']}: {err}") from None
    return args


def run_state(run_dir: Path, epochs: int) -> str:
    """``done`` when the last epoch is in the run's summary, ``resume`` when it has a ``last``
    checkpoint, else ``new``."""
    summary = run_dir / 'summary.csv'
    if summary.is_file():
        with open(summary) as f:
            if any(int(row['epoch']) == epochs - 1 for row in csv.DictReader(f)):
                return 'done'
    return 'resume' if (run_dir / 'last.pth.tar').is_file() else 'new'


@contextmanager
def run_lock(output: Path, experiment: str) -> Iterator[bool]:
    """Whether this process holds the run's lock (another worker's run is not touched). The
    operating system drops the lock when its holder dies, so a killed worker leaves none behind."""
    output.mkdir(parents=True, exist_ok=True)
    with open(output / f'.{experiment}.lock', 'w') as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_queue(spec: Dict[str, Any], output: Optional[Path] = None) -> Dict[str, str]:
    """Train every run that is not done and not locked by another worker; returns each run's
    state as this worker left it (done, or taken by another worker)."""
    output = Path(output or spec.get('output', 'output/queue'))
    # Every run's arguments are checked before the first one trains.
    queued = [(run['experiment'], run_args(spec, run, output)) for run in spec['runs']]
    states = {}
    for experiment, args in queued:
        with run_lock(output, experiment) as held:
            if not held:
                states[experiment] = 'another worker'
                continue
            run_dir = output / experiment
            state = run_state(run_dir, args.epochs)
            if state != 'done':
                if state == 'resume':
                    args.resume = str(run_dir / 'last.pth.tar')
                _logger.info(f'{experiment}: {"resuming" if state == "resume" else "starting"}')
                train(args)
            states[experiment] = 'done'
    return states


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='timm-frelu train-queue', description=__doc__.splitlines()[0])
    parser.add_argument('queue', help='queue YAML file')
    parser.add_argument('--output', default=None, help="parent folder of the run folders (default: the file's output)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        states = run_queue(load_queue(Path(args.queue)), Path(args.output) if args.output else None)
    except QueueError as err:
        print(f'timm-frelu train-queue: {err}', file=sys.stderr)
        return 2
    for experiment, state in states.items():
        print(f'{experiment}: {state}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
