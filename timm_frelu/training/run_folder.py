"""A training run's folder: the one owner of its file names and the one reader of its summary.

The training command writes ``args.yaml`` (its arguments and records), ``summary.csv`` (one row
per epoch, timm's ``update_summary`` format), ``last.pth.tar`` (every epoch) and
``model_best.pth.tar``, and with ``--recovery-interval`` ``recovery-<epoch>-<batch>.pth.tar`` within an
epoch; the queue, publishing, the report and the rank check read them.
"""
import csv
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ARGS_FILE = 'args.yaml'
SUMMARY_FILE = 'summary.csv'
LAST_CHECKPOINT = 'last.pth.tar'
BEST_CHECKPOINT = 'model_best.pth.tar'
# The weights alone that a queue restores a run's lean snapshot to on a new machine, to go on from.
RESTART_WEIGHTS = 'restart.safetensors'
# timm's mid-epoch checkpoints (--recovery-interval): recovery-<epoch>-<batches done>.pth.tar.
RECOVERY_PREFIX = 'recovery'
CHECKPOINT_EXTENSION = '.pth.tar'


def recovery_checkpoints(folder: Path) -> List[Tuple[int, int, Path]]:
    """The run folder's recovery checkpoints as (epoch, batches done, path), oldest first."""
    found = []
    for path in Path(folder).glob(f'{RECOVERY_PREFIX}-*{CHECKPOINT_EXTENSION}'):
        fields = path.name[:-len(CHECKPOINT_EXTENSION)].split('-')[1:]
        if len(fields) == 2 and all(field.isdigit() for field in fields):
            found.append((int(fields[0]), int(fields[1]), path))
    return sorted(found)


def resume_point(folder: Path) -> Optional[Path]:
    """The checkpoint a run goes on from: its newest recovery checkpoint, else ``last.pth.tar``
    (None without either). Training removes the recovery checkpoints once an epoch's ``last`` is
    written, so one that is left is newer than ``last``."""
    recoveries = recovery_checkpoints(folder)
    if recoveries:
        return recoveries[-1][2]
    last = Path(folder) / LAST_CHECKPOINT
    return last if last.is_file() else None


def read_summary(summary_csv: Path) -> List[Dict[str, float]]:
    """Every epoch row of a ``summary.csv``, each filled column as a number; [] without the file."""
    if not Path(summary_csv).is_file():
        return []
    with open(summary_csv) as f:
        return [{key: float(value) for key, value in row.items() if value not in (None, '')} for row in csv.DictReader(f)]


def evaluated_epochs(summary_csv: Path) -> List[Dict[str, float]]:
    """The rows of the epochs that were evaluated (a run without --val-split has none)."""
    return [row for row in read_summary(summary_csv) if 'eval_top1' in row]


def epochs_done(folder: Path) -> int:
    """How many epochs the ``summary.csv`` in ``folder`` records (0 without one)."""
    return max((int(row['epoch']) + 1 for row in read_summary(Path(folder) / SUMMARY_FILE)), default=0)
