"""A queue of training runs that outlives sessions: the same command, run again, goes on.

A queue is a YAML file:

    output: output/zoo                      # parent of the run folders (relative to the cwd)
    defaults: {channels_last: true}         # training arguments every run shares (optional)
    runs:
      - {experiment: r30-resnet20_frelu-s0, config: zoo_configs/cpu/resnet20_frelu_cifar10.yaml, args: {seed: 0},
         published: checkpoints/resnet20_frelu.r30_cifar10}   # optional: its summary.csv marks the run done
      - {experiment: r30-resnet20_relu-s0, config: zoo_configs/cpu/resnet20_relu_cifar10.yaml, args: {seed: 0}}

``timm-frelu train-queue QUEUE.yaml`` trains the runs in order with the training command's own code,
each into ``<output>/<experiment>/``. A run whose last epoch is in its ``summary.csv`` is done and
skipped; one with a ``last.pth.tar`` is resumed from it (the training command's exact resume);
others start. So a killed queue, or one cut off when a session ends, continues where it stopped
when the command runs again. Several workers (one per core, say, each with ``threads: 1``) can
run one queue at once: each run is locked while one trains it, the others take the next.

A run whose ``published`` folder (``timm-frelu publish`` output) records every epoch is done, so
neither a fresh checkout nor an older run folder trains a published run again. Across machines,
``--snapshot DIR`` copies each unfinished run's resumable state (``args.yaml``, ``summary.csv``,
``last.pth.tar``) to ``DIR/<experiment>/`` (a folder to commit), drops the snapshots of runs
that have finished, and names any finished run whose entry lacks ``published``; ``--restore DIR``
copies a snapshot of an unpublished run back when it is further along than the run folder, then
trains as usual.
"""
import argparse
import csv
import fcntl
import logging
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from .errors import TimmFreluError
from .fileio import copy_file_atomic, read_yaml_mapping
from .train import check_args, train, training_args

_logger = logging.getLogger('train_queue')


class QueueError(TimmFreluError, ValueError):
    pass


def load_queue(path: Path) -> Dict[str, Any]:
    spec = read_yaml_mapping(path, 'queue file')
    runs = spec.get('runs')
    if not isinstance(runs, list) or not runs:
        raise QueueError(f'{path} has no runs; see `timm_frelu.train_queue` for the queue file format.')
    names = [run.get('experiment') for run in runs]
    if not all(names):
        raise QueueError(f'{path}: every run needs an experiment name (its folder under output).')
    if len(set(names)) != len(names):
        raise QueueError(f'{path}: experiment names repeat; each run needs a folder of its own.')
    for run in runs:
        if run.get('published') and not (Path(run['published']) / 'summary.csv').is_file():
            # The queue's paths are relative to the cwd, so the usual cause is running it from elsewhere.
            raise QueueError(f"run {run['experiment']}: its published folder {run['published']} has no summary.csv "
                             f"(looked in {Path(run['published']).absolute()}); "
                             "run the queue from the folder its paths are relative to, "
                             "publish the run first (timm-frelu publish), or drop the run's published entry.")
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


RESUMABLE_FILES = ('args.yaml', 'summary.csv', 'last.pth.tar')


def epochs_done(run_dir: Path) -> int:
    """How many epochs the run's summary records (0 without one)."""
    summary = Path(run_dir) / 'summary.csv'
    if not summary.is_file():
        return 0
    with open(summary) as f:
        return max((int(row['epoch']) + 1 for row in csv.DictReader(f)), default=0)


def run_state(run_dir: Path, epochs: int, published: Optional[Path] = None) -> str:
    """``done`` when the run's summary or its published folder's reaches the last epoch (a published
    run is not trained again from an older run folder on this machine), ``resume`` when it has a
    ``last`` checkpoint, else ``new``."""
    if any(epochs_done(record) >= epochs for record in (run_dir, published) if record is not None):
        return 'done'
    return 'resume' if (run_dir / 'last.pth.tar').is_file() else 'new'


def copy_run_state(source: Path, target: Path) -> None:
    """Copy a run's resumable files, each through a temporary file, so an interrupted copy leaves
    the target's previous files whole; ``last.pth.tar`` goes last, as it makes the copy resumable."""
    missing = [name for name in RESUMABLE_FILES if not (source / name).is_file()]
    if missing:
        raise QueueError(f'{source} lacks {", ".join(missing)}: not a resumable run folder.')
    target.mkdir(parents=True, exist_ok=True)
    for name in RESUMABLE_FILES:
        copy_file_atomic(source / name, target / name)


def snapshot_queue(spec: Dict[str, Any], output: Path, keep: Path) -> Dict[str, str]:
    """Copy every unfinished run that has a ``last`` checkpoint into ``keep/<experiment>/``; remove
    the snapshots of finished runs. Returns what happened to each run."""
    states = {}
    for run in spec['runs']:
        experiment, args = run['experiment'], run_args(spec, run, output)
        run_dir, kept = output / experiment, keep / experiment
        state = run_state(run_dir, args.epochs, _published(run))
        if state == 'done':
            if kept.exists():
                shutil.rmtree(kept)
                states[experiment] = 'finished: snapshot removed'
            if _published(run) is None:
                # Only the queue file travels to a fresh checkout, so without this entry it trains the run again.
                states[experiment] = (f'finished, but its queue entry has no published: folder, so a fresh checkout '
                                      f'would train it again; publish it (timm-frelu publish {run_dir} --name '
                                      f'{args.model}.<tag>) and add published: <that folder> to the entry')
        elif state == 'resume':
            copy_run_state(run_dir, kept)
            states[experiment] = f'snapshot kept, {epochs_done(kept)} of {args.epochs} epochs done'
    return states


def restore_queue(spec: Dict[str, Any], output: Path, keep: Path) -> Dict[str, str]:
    """Copy each run's snapshot from ``keep`` into the run folder when it is further along and the
    run is not already published."""
    states = {}
    for run in spec['runs']:
        experiment = run['experiment']
        kept, run_dir = keep / experiment, output / experiment
        if not (kept / 'last.pth.tar').is_file():
            continue
        published = _published(run)
        if published is not None and epochs_done(published) >= run_args(spec, run, output).epochs:
            # A snapshot left from before the run was published would make the queue train it again.
            states[experiment] = f'not restored: published in {published}; its snapshot is stale'
            continue
        here, there = epochs_done(run_dir), epochs_done(kept)
        if (run_dir / 'last.pth.tar').is_file() and here >= there:
            states[experiment] = f'not restored: the run folder has {here} epochs done, the snapshot no more'
            continue
        copy_run_state(kept, run_dir)
        states[experiment] = f'restored, {there} epochs done'
    return states


def queue_output(spec: Dict[str, Any], output: Optional[Path] = None) -> Path:
    """The parent of the run folders: ``output`` when given, else the queue file's (``~`` is the
    home folder: run folders that must outlive the checkout live outside it)."""
    return Path(output or spec.get('output', 'output/queue')).expanduser()


def _published(run: Dict[str, Any]) -> Optional[Path]:
    return Path(run['published']) if run.get('published') else None


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
    output = queue_output(spec, output)
    # Every run's arguments are checked before the first one trains.
    queued = [(run, run_args(spec, run, output)) for run in spec['runs']]
    states = {}
    for run, args in queued:
        experiment = run['experiment']
        with run_lock(output, experiment) as held:
            if not held:
                states[experiment] = 'another worker'
                continue
            run_dir = output / experiment
            state = run_state(run_dir, args.epochs, _published(run))
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
    parser.add_argument('--snapshot', metavar='DIR', default=None,
                        help='copy the unfinished runs\' resumable state to DIR/<experiment>/ and exit (no training)')
    parser.add_argument('--restore', metavar='DIR', default=None,
                        help='first copy back the snapshots in DIR that are further along than their run folders')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        spec = load_queue(Path(args.queue))
        output = queue_output(spec, args.output)
        if args.snapshot:
            states = snapshot_queue(spec, output, Path(args.snapshot))
        else:
            if args.restore:
                for experiment, state in restore_queue(spec, output, Path(args.restore)).items():
                    print(f'{experiment}: {state}')
            states = run_queue(spec, output)
    except TimmFreluError as err:
        print(f'timm-frelu train-queue: {err}', file=sys.stderr)
        return 2
    for experiment, state in states.items():
        print(f'{experiment}: {state}')
    if args.snapshot and not states:
        print(f'no run of {args.queue} is unfinished with a last checkpoint: nothing to keep in {args.snapshot}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
