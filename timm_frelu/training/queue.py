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
skipped; one with a ``last.pth.tar`` or a recovery checkpoint is resumed from the newer (the training
command's exact resume); others start. So a killed queue, or one cut off when a session ends,
continues where it stopped when the command runs again. Several workers (one per core, say, each
with ``threads: 1``) can run one queue at once: each run is locked while one trains it, the others
take the next.

A run whose ``published`` folder (``timm-frelu publish`` output) records every epoch is done, so
neither a fresh checkout nor an older run folder trains a published run again. A run with a
``publish`` entry is published by the queue itself as soon as it finishes, into the folder that
entry names, which is then its ``published`` folder (nothing to add by hand):

      - {experiment: cpu30-resnet18_frelu-seed0, config: ..., publish: {name: resnet18_frelu.cpu30_cifar10}}
        # into checkpoints/resnet18_frelu.cpu30_cifar10/, with its card
      - {experiment: ...-seed1, config: ..., publish: {name: resnet18_frelu.cpu30_cifar10, into: docs/results/seeds/...-seed1,
         card: false}}   # a seed record for the report (eval_datasets: [...] picks the test sets)

Across machines, ``--snapshot DIR`` copies each unfinished run's resumable state (``args.yaml``,
``summary.csv``, ``last.pth.tar``) to ``DIR/<experiment>/`` (a folder to commit), drops the
snapshots of runs that have finished, and names any finished run whose entry lacks
``published``; ``--restore DIR`` copies a snapshot of an unpublished run back when it is further
along than the run folder, then trains as usual.

A run whose ``last.pth.tar`` is too big to commit (over 16 MiB: ResNet-18/34/50, whose optimizer
and EMA state make 130-280 MB) gets a *lean* snapshot instead: its model weights alone, rounded to
4 bits (:mod:`.lean_weights`, 6-13 MB), beside ``args.yaml`` and ``summary.csv``. It is written only
once the run is a third of its epochs past the snapshot already there (a third from the start for
the first), so a run adds at most two to the repository's history and a fresh machine loses less
than a third of it; and, where the queue file sets ``snapshot_history_mb``, only while the queue's
snapshots, every version git holds under the snapshot folder, stay within that many MB. Restored,
it continues the run from those weights at that epoch with fresh momentum and a fresh EMA
(``--initial-checkpoint`` with ``--start-epoch``): not the exact resume the same machine's run
folder gives (``benchmarks/lean_snapshot.py`` measures what the rounding changes).
"""
import argparse
import fcntl
import logging
import math
import os
import shutil
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from safetensors import safe_open

from ..errors import TimmFreluError
from ..fileio import copy_file_atomic, read_yaml_mapping, save_safetensors_atomic
from .checkpoint import read_checkpoint
from .git_history import committed_bytes
from .lean_weights import RoundedWeightsError, load_rounded_weights, save_rounded_weights
from .run_folder import (ARGS_FILE, LAST_CHECKPOINT, RESTART_WEIGHTS, SUMMARY_FILE, epochs_done, recovery_checkpoints,
                         resume_point)
from .train import check_args, train, training_args

_logger = logging.getLogger('train_queue')


class QueueError(TimmFreluError, ValueError):
    pass


def load_queue(path: Path) -> Dict[str, Any]:
    spec = read_yaml_mapping(path, 'queue file')
    runs = spec.get('runs')
    if not isinstance(runs, list) or not runs:
        raise QueueError(f'{path} has no runs; see `timm_frelu.training.queue` for the queue file format.')
    names = [run.get('experiment') for run in runs]
    if not all(names):
        raise QueueError(f'{path}: every run needs an experiment name (its folder under output).')
    if len(set(names)) != len(names):
        raise QueueError(f'{path}: experiment names repeat; each run needs a folder of its own.')
    budget = spec.get('snapshot_history_mb')
    if budget is not None and not (isinstance(budget, (int, float)) and not isinstance(budget, bool) and budget > 0):
        raise QueueError(f'{path}: snapshot_history_mb must be a positive number of megabytes, not {budget!r}.')
    for run in runs:
        publish = run.get('publish')
        if publish is not None and not (isinstance(publish, dict) and publish.get('name')):
            raise QueueError(f"run {run['experiment']}: publish must be a mapping with a name, e.g. "
                             "publish: {name: resnet18_frelu.cpu30_cifar10}.")
        if publish is not None and run.get('published'):
            raise QueueError(f"run {run['experiment']}: give publish or published, not both; publish names the "
                             "folder the queue publishes into, which is then the run's published folder.")
        if run.get('published') and not (Path(run['published']) / SUMMARY_FILE).is_file():
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


RESUMABLE_FILES = (ARGS_FILE, SUMMARY_FILE, LAST_CHECKPOINT)
# A run's record files, which a lean snapshot keeps beside its weights.
RECORD_FILES = (ARGS_FILE, SUMMARY_FILE)
LEAN_WEIGHTS = 'weights-4bit.safetensors'
LEAN_ABOVE_BYTES = 16 * 2 ** 20


def run_state(run_dir: Path, epochs: int, published: Optional[Path] = None) -> str:
    """``done`` when the run's summary or its published folder's reaches the last epoch (a published
    run is not trained again from an older run folder on this machine), ``resume`` when it has a
    ``last`` or recovery checkpoint, ``restart`` when it has the weights of a restored lean snapshot,
    else ``new``."""
    if any(epochs_done(record) >= epochs for record in (run_dir, published) if record is not None):
        return 'done'
    if resume_point(run_dir) is not None:
        return 'resume'
    return 'restart' if (run_dir / RESTART_WEIGHTS).is_file() else 'new'


def copy_run_state(source: Path, target: Path) -> None:
    """Copy a run's resumable files, each through a temporary file, so an interrupted copy leaves
    the target's previous files whole; ``last.pth.tar`` goes last, as it makes the copy resumable."""
    missing = [name for name in RESUMABLE_FILES if not (source / name).is_file()]
    if missing:
        raise QueueError(f'{source} lacks {", ".join(missing)}: not a resumable run folder.')
    target.mkdir(parents=True, exist_ok=True)
    for name in RESUMABLE_FILES:
        copy_file_atomic(source / name, target / name)


def write_lean_snapshot(run_dir: Path, target: Path, checkpoint: Optional[Dict[str, Any]] = None) -> int:
    """Keep the model weights of ``run_dir``'s ``last`` checkpoint (``checkpoint``, when already
    read) in ``target``, rounded to 4 bits (:mod:`.lean_weights`), and the run's records; returns
    the bytes of the weights file. Each file is written whole or not at all."""
    checkpoint = checkpoint or read_checkpoint(run_dir / LAST_CHECKPOINT)
    target.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        copy_file_atomic(run_dir / name, target / name)
    save_rounded_weights(checkpoint['state_dict'], target / LEAN_WEIGHTS, {'epochs_done': str(_checkpoint_epochs(checkpoint))},
                         bits=4)
    return (target / LEAN_WEIGHTS).stat().st_size


def read_lean_snapshot(path: Path) -> Tuple[Dict[str, torch.Tensor], int]:
    """A lean snapshot's weights, back in fp32, and the epochs the run had done."""
    try:
        weights, metadata = load_rounded_weights(path)
    except RoundedWeightsError as err:
        raise QueueError(f'The lean snapshot {path} cannot be restored: {err}') from None
    return weights, int(metadata['epochs_done'])


def epochs_of_weights(path: Path) -> int:
    """The epochs the run had done when a lean snapshot, or the restart weights made from one, was
    written (0 without the file)."""
    if not Path(path).is_file():
        return 0
    with safe_open(str(path), framework='pt') as f:
        return int(f.metadata()['epochs_done'])


def _checkpoint_epochs(checkpoint: Dict[str, Any]) -> int:
    # The checkpoint's own epoch, not the summary's: each epoch's row is written just before its checkpoint.
    return checkpoint['epoch'] + 1


def _snapshot_run(run_dir: Path, kept: Path, epochs: int, lean: bool, history_budget: Optional[float]) -> str:
    """Keep an unfinished run's state in ``kept``: whole when ``last.pth.tar`` is small, lean
    (see the module docstring) when it is big or ``lean`` asks for it, and then only while the
    queue's snapshots stay within ``history_budget`` bytes of git history."""
    if not lean and (run_dir / LAST_CHECKPOINT).stat().st_size <= LEAN_ABOVE_BYTES:
        copy_run_state(run_dir, kept)
        return f'snapshot kept, {epochs_done(kept)} of {epochs} epochs done'
    checkpoint = read_checkpoint(run_dir / LAST_CHECKPOINT)
    done, before, third = _checkpoint_epochs(checkpoint), epochs_of_weights(kept / LEAN_WEIGHTS), math.ceil(epochs / 3)
    if done - before < third:
        what = f'the snapshot there has {before}' if before else 'none was kept before'
        return (f'lean snapshot not written: {done} of {epochs} epochs done and {what}, less than a third of the run '
                f'({third} epochs) apart; a fresh machine would redo at most {done - before} '
                f'epoch{"" if done - before == 1 else "s"}')
    staging = kept.with_name(f'.{kept.name}.staging')
    shutil.rmtree(staging, ignore_errors=True)
    size = write_lean_snapshot(run_dir, staging, checkpoint)
    budget_note = ''
    if history_budget is not None:
        history = committed_bytes(kept.parent)
        cost = len(zlib.compress((staging / LEAN_WEIGHTS).read_bytes(), 6))  # a blob as git stores it
        budget_note = (f'; committed, the queue\'s snapshots take {(history + cost) / 1e6:.1f} MB of the '
                       f'{history_budget / 1e6:g} MB of git history it allows')
        if history + cost > history_budget:
            shutil.rmtree(staging)
            return (f'lean snapshot not written: the snapshots of this queue already take {history / 1e6:.1f} MB of git '
                    f'history and this one would add {cost / 1e6:.1f} MB, past the {history_budget / 1e6:g} MB the queue '
                    f'file allows (snapshot_history_mb). The run folder still resumes exactly on this machine; a fresh '
                    f'machine would redo {done - before} epochs')
    kept.mkdir(parents=True, exist_ok=True)
    for name in (*RECORD_FILES, LEAN_WEIGHTS):  # the weights last, as they make the snapshot this epoch's
        os.replace(staging / name, kept / name)
    (kept / LAST_CHECKPOINT).unlink(missing_ok=True)  # a full snapshot of an earlier, smaller format
    staging.rmdir()
    return f'lean snapshot kept, {done} of {epochs} epochs done ({size / 2 ** 20:.1f} MiB of 4-bit weights){budget_note}'


def snapshot_queue(spec: Dict[str, Any], output: Path, keep: Path, lean: bool = False) -> Dict[str, str]:
    """Keep every unfinished run that has a ``last`` checkpoint in ``keep/<experiment>/``; remove
    the snapshots of finished runs. Returns what happened to each run."""
    budget_mb = spec.get('snapshot_history_mb')
    history_budget = None if budget_mb is None else budget_mb * 1e6
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
        elif state == 'resume' and not (run_dir / LAST_CHECKPOINT).is_file():
            states[experiment] = 'nothing to snapshot: no epoch has finished yet'
        elif state == 'resume':
            states[experiment] = _snapshot_run(run_dir, kept, args.epochs, lean, history_budget)
    return states


def restore_queue(spec: Dict[str, Any], output: Path, keep: Path) -> Dict[str, str]:
    """Copy each run's snapshot from ``keep`` into the run folder when it is further along and the
    run is not already published."""
    states = {}
    for run in spec['runs']:
        experiment = run['experiment']
        kept, run_dir = keep / experiment, output / experiment
        if not (kept / LAST_CHECKPOINT).is_file() and not (kept / LEAN_WEIGHTS).is_file():
            continue
        published = _published(run)
        if _published_in_full(run, run_args(spec, run, output).epochs):
            # A snapshot left from before the run was published would make the queue train it again.
            states[experiment] = f'not restored: published in {published}; its snapshot is stale'
            continue
        lean = (kept / LEAN_WEIGHTS).is_file()
        here, there = epochs_done(run_dir), epochs_of_weights(kept / LEAN_WEIGHTS) if lean else epochs_done(kept)
        if (resume_point(run_dir) is not None or (run_dir / RESTART_WEIGHTS).is_file()) and here >= there:
            states[experiment] = f'not restored: the run folder has {here} epochs done, the snapshot no more'
            continue
        if lean:
            _restore_lean(kept, run_dir)
            states[experiment] = f'restored from its lean snapshot, {there} epochs done (fresh momentum and EMA)'
        else:
            copy_run_state(kept, run_dir)
            states[experiment] = f'restored, {there} epochs done'
    return states


def _restore_lean(kept: Path, run_dir: Path) -> None:
    """Lay a lean snapshot out in ``run_dir`` for the run to start from: its records, and its
    weights in fp32. An older ``last`` checkpoint there is kept aside, not resumed."""
    weights, done = read_lean_snapshot(kept / LEAN_WEIGHTS)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / LAST_CHECKPOINT).is_file():
        os.replace(run_dir / LAST_CHECKPOINT, run_dir / 'last-before-restore.pth.tar')
    for _, _, recovery in recovery_checkpoints(run_dir):  # older than the snapshot, and resumed before it otherwise
        recovery.unlink()
    for name in RECORD_FILES:
        copy_file_atomic(kept / name, run_dir / name)
    # Last, as it makes the run folder one to restart from.
    save_safetensors_atomic(weights, run_dir / RESTART_WEIGHTS, {'epochs_done': str(done)})


def queue_output(spec: Dict[str, Any], output: Optional[Path] = None) -> Path:
    """The parent of the run folders: ``output`` when given, else the queue file's (``~`` is the
    home folder: run folders that must outlive the checkout live outside it)."""
    return Path(output or spec.get('output', 'output/queue')).expanduser()


def _published(run: Dict[str, Any]) -> Optional[Path]:
    """The run's published folder: its ``published`` entry, or the folder its ``publish`` entry
    publishes into (which need not exist yet)."""
    if run.get('published'):
        return Path(run['published'])
    publish = run.get('publish')
    if publish:
        return Path(publish.get('into', 'checkpoints')) / publish['name']
    return None


def _published_in_full(run: Dict[str, Any], epochs: int) -> bool:
    """Whether the run's published folder records every one of its epochs: the run is done everywhere."""
    published = _published(run)
    return published is not None and epochs_done(published) >= epochs


def publish_finished_run(run: Dict[str, Any], run_dir: Path, args: argparse.Namespace) -> Optional[Path]:
    """Publish a finished run as its ``publish`` entry says, unless its folder already records
    every epoch; returns the folder published into (None for a run without the entry)."""
    publish_spec, published = run.get('publish'), _published(run)
    if not publish_spec or epochs_done(published) >= args.epochs:
        return None
    from ..publishing import publish  # publishing evaluates and draws figures: only when a run finishes
    card = publish_spec.get('card', True)
    try:
        publish(run_dir, publish_spec['name'], output_root=published.parent, card=card, data_dir=args.data_dir,
                **({'eval_datasets': publish_spec['eval_datasets']} if publish_spec.get('eval_datasets') else {}))
    except TimmFreluError as err:
        raise QueueError(f"run {run['experiment']} finished, but publishing it failed: {err} Fix that and run the "
                         "queue again, which publishes it without training.") from None
    _logger.info(f"{run['experiment']}: {'published' if card else 'recorded'} in {published}")
    return published


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


def queue_status(spec: Dict[str, Any], output: Path) -> Dict[str, str]:
    """Where each run stands, read from its published folder and its run folder on this machine.
    Nothing is trained or changed: the one file it may write is the empty lock file of a run
    folder that has none, to ask whether a worker holds the run."""
    states = {}
    for run in spec['runs']:
        experiment, epochs = run['experiment'], run_args(spec, run, output).epochs
        run_dir, published = output / experiment, _published(run)
        state = run_state(run_dir, epochs, published)
        if _published_in_full(run, epochs):
            states[experiment] = f'published in {published}'
        elif state == 'done':
            states[experiment] = f'finished in {run_dir}, not published'
        elif state == 'new':
            states[experiment] = 'not started'
        else:
            done = epochs_done(run_dir) if state == 'resume' else epochs_of_weights(run_dir / RESTART_WEIGHTS)
            with run_lock(output, experiment) as held:
                worker = 'not training now: run the queue to go on' if held else 'training now'
            states[experiment] = f'{done} of {epochs} epochs done in {run_dir}, {worker}'
    return states


def readme_section(spec: Dict[str, Any], output: Path) -> str:
    """The queue in a README: its published runs, then the rest in the order it trains them. Read
    from the published folders alone, which the repository holds, so every checkout writes the same."""
    published, pending = [], []
    for run in spec['runs']:
        folder = _published(run)
        done = _published_in_full(run, run_args(spec, run, output).epochs)
        (published if done else pending).append(f'`{folder.name if folder is not None else run["experiment"]}`')
    lines = [f"- Published: {', '.join(published) or 'none yet'}."]
    lines.append(f"- Not yet published, in the order the queue trains them: {', '.join(pending)}." if pending
                 else f'- All {len(published)} runs are published.')
    return '\n'.join(lines)


def readme_section_name(queue: Path) -> str:
    """The markers of a queue's README section: ``<!-- cpu_study_cifar10-runs:start -->``."""
    return f'{Path(queue).stem}-runs'


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
                    args.resume = str(resume_point(run_dir))
                elif state == 'restart':
                    args.initial_checkpoint, args.start_epoch = str(run_dir / RESTART_WEIGHTS), epochs_of_weights(run_dir / RESTART_WEIGHTS)
                _logger.info(f'{experiment}: ' + {'resume': 'resuming', 'new': 'starting'}.get(
                    state, f'continuing from its restored weights at epoch {args.start_epoch}'))
                train(args)
            published = publish_finished_run(run, run_dir, args)
            states[experiment] = f'done, published in {published}' if published else 'done'
    return states


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='timm-frelu train-queue', description=__doc__.splitlines()[0])
    parser.add_argument('queue', help='queue YAML file')
    parser.add_argument('--output', default=None, help="parent folder of the run folders (default: the file's output)")
    parser.add_argument('--snapshot', metavar='DIR', default=None,
                        help='copy the unfinished runs\' resumable state to DIR/<experiment>/ and exit (no training)')
    parser.add_argument('--lean', action='store_true',
                        help="with --snapshot: keep the runs' weights alone, in 4 bits, whatever their checkpoint's size "
                             '(the default for checkpoints over 16 MiB)')
    parser.add_argument('--restore', metavar='DIR', default=None,
                        help='first copy back the snapshots in DIR that are further along than their run folders')
    parser.add_argument('--status', action='store_true',
                        help='say which runs are published, which are training and how far, and exit (no training)')
    parser.add_argument('--update-readme', metavar='README', default=None,
                        help="rewrite this README's list of the queue's published and unpublished runs, between "
                             'its <!-- QUEUE-runs:start --> and <!-- QUEUE-runs:end --> lines, and exit (no training)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    spec = load_queue(Path(args.queue))
    output = queue_output(spec, args.output)
    if args.update_readme:
        from ..publishing.readme import update_section
        changed = update_section(Path(args.update_readme), readme_section_name(Path(args.queue)), readme_section(spec, output))
        print(f"{args.update_readme}: the queue's runs {'updated' if changed else 'already current'}")
        return 0
    if args.status:
        states = queue_status(spec, output)
    elif args.snapshot:
        states = snapshot_queue(spec, output, Path(args.snapshot), lean=args.lean)
    else:
        if args.restore:
            for experiment, state in restore_queue(spec, output, Path(args.restore)).items():
                print(f'{experiment}: {state}')
        states = run_queue(spec, output)
    for experiment, state in states.items():
        print(f'{experiment}: {state}')
    if args.snapshot and not states:
        print(f'no run of {args.queue} is unfinished with a last checkpoint: nothing to keep in {args.snapshot}')
    return 0

