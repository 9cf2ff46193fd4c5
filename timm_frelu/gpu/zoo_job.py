"""The GPU zoo job: train a plan of models on a lent GPU in the minutes it is lent for, and publish
what comes back.

A GPU is lent to some sessions by chance, for a few minutes, through a tool that sends the working
tree to the machine, runs one command there and brings back at most 8 files of 16 MiB. So:

* ``prepare`` (here) puts what the job needs beside the working tree in git-ignored folders: the
  CIFAR-10 JPEG archive (``.zoo-data/``) and wheels of the packages the machine's own Python lacks
  at the versions this project needs (``.whl/``), and prints the command to run there.
* ``run`` (there) trains the plan's runs in priority order. Each run first measures its training
  speed for a few seconds, then sizes its epochs so that the schedule ends inside its share of the
  time budget, and trains with the project's training code. After every epoch the whole job's
  state (each run's EMA weights in fp16, args, per-epoch summary, log) is packed into one archive
  split into parts under ``--output``, with a manifest of SHA256 sums, so a job cut off at any
  moment still returns every finished epoch.
* ``publish`` (here) checks every part and the archive against the manifest, unpacks it and
  publishes each finished run with the project's publish command, which evaluates the shipped
  fp16 file on both CIFAR-10 test sets here.

A plan is a YAML file::

    recipe: recipe_cifar10.yaml                                    # train -c defaults, beside the plan
    defaults: {amp: true, channels_last: true, ...}                # train arguments over the recipe's
    benchmarks: [{archs: [resnet18, resnet50], batch_size: 256}]    # optional FReLU/ReLU step ratios
    runs:                                                          # in priority order
      - {name: resnet18_frelu.gpu_cifar10, share: 1, args: {epochs: 200}}  # epochs: the most it may take

    timm-frelu gpu-zoo run zoo_configs/gpu/plan-1-resnet18.yaml --output "$OUT" --time-budget 500
"""
import argparse
import functools
import hashlib
import io
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import TimmFreluError
from ..fileio import file_sha256, read_yaml_mapping, write_json_atomic, write_text_atomic
from ..pretrained import ZooName
from ..training.run_folder import ARGS_FILE, LAST_CHECKPOINT, SUMMARY_FILE

_logger = logging.getLogger('gpu_zoo')

MANIFEST = 'manifest.json'
PART_SIZE = 15 * 2 ** 20  # under the 16 MiB a file may have to come back
WEIGHTS = 'model.safetensors'
# What the machine's Python lacks at the versions this project is built on (its torch, torchvision,
# huggingface-hub, safetensors and PyYAML serve).
DEVICE_WHEELS = ('timm==1.0.31',)
DEVICE_PYTHON = '3.12'
DATA_FOLDER, WHEEL_FOLDER = '.zoo-data', '.whl'


class GpuZooError(TimmFreluError, RuntimeError):
    pass


class _TimeUp(Exception):
    """Raised from the epoch callback when the next epoch would not end before the run's deadline."""


@dataclass
class PlannedRun:
    name: str  # <model>.<recipe>_<dataset>: the model trained, and the name it is published as
    share: float = 1.0
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    defaults: Dict[str, Any]
    runs: List[PlannedRun]
    benchmarks: List[Dict[str, Any]]


def load_plan(path: Path) -> Plan:
    spec = read_yaml_mapping(path, 'GPU zoo plan')
    runs = spec.get('runs') or []
    if not runs:
        raise GpuZooError(f'{path} lists no runs; a plan needs runs: [{{name: <model>.<tag>, share: 1}}, ...].')
    planned = []
    for run in runs:
        unknown = set(run) - {'name', 'share', 'args'}
        if unknown or '.' not in run.get('name', ''):
            raise GpuZooError(f'{path}: each run is {{name: <model>.<tag>, share, args}}; got {run}.')
        planned.append(PlannedRun(run['name'], float(run.get('share', 1.0)), dict(run.get('args') or {})))
    defaults = {}
    if spec.get('recipe'):  # a training recipe (train -c YAML) under the plan's own defaults
        defaults.update(read_yaml_mapping(Path(path).parent / spec['recipe'], 'recipe the plan names'))
    defaults.update(spec.get('defaults') or {})
    return Plan(defaults, planned, list(spec.get('benchmarks') or []))


def train_args(plan: Plan, run: PlannedRun, work_dir: Path, device: str) -> argparse.Namespace:
    """The training arguments of one planned run: the plan's, then the run's own."""
    from ..training.train import training_args
    name = ZooName.parse(run.name)
    overrides = {**plan.defaults, **run.args, 'model': f'{name.model}.{name.dataset}',  # published as run.name
                 'device': device, 'output': str(work_dir), 'experiment': run.name}
    try:
        return training_args(**overrides)
    except ValueError as err:
        raise GpuZooError(f'{run.name} in the plan: {err}') from None


# ---- measuring speed -------------------------------------------------------------------------------

def measure_train_speed(args: argparse.Namespace, seconds: float, model_name: Optional[str] = None) -> Dict[str, float]:
    """Images per second of training steps as ``args`` configures them (model, batch, AMP, layout,
    compile), on random data; the first step, which includes any compilation, is timed apart."""
    import torch
    from timm.models import create_model
    from ..studies.measure import seconds_per_call, training_step

    model = create_model(model_name or args.model, num_classes=args.num_classes or 10, **(args.model_kwargs or {}))
    step = training_step(model.to(args.device), args.batch_size, channels_last=args.channels_last,
                         compile=bool(args.torchcompile), autocast_dtype=torch.bfloat16 if args.amp else None)
    start = time.perf_counter()
    step()
    if args.device.startswith('cuda'):
        torch.cuda.synchronize()
    warmup = time.perf_counter() - start
    return dict(img_per_sec=args.batch_size / seconds_per_call(step, seconds), warmup_s=warmup)


def run_benchmarks(plan: Plan, device: str, seconds: float = 8.0) -> List[Dict[str, Any]]:
    """FReLU/ReLU training-step ratios for the plan's ``benchmarks`` entries."""
    from ..training.train import training_args
    rows = []
    for bench in plan.benchmarks:
        for arch in bench.get('archs', ['resnet18']):
            for compiled in bench.get('compile', [False]):
                args = training_args(device=device, batch_size=int(bench.get('batch_size', 256)),
                                     amp=bool(bench.get('amp', True)), channels_last=bool(bench.get('channels_last', True)),
                                     torchcompile='inductor' if compiled else None)
                speeds = {act: measure_train_speed(args, seconds, f'{arch}_{act}')['img_per_sec'] for act in ('relu', 'frelu')}
                rows.append(dict(arch=arch, batch_size=args.batch_size, amp=args.amp, channels_last=args.channels_last,
                                 compiled=compiled, relu_img_per_sec=speeds['relu'], frelu_img_per_sec=speeds['frelu'],
                                 frelu_time_ratio=speeds['relu'] / speeds['frelu']))
                _logger.info(f'benchmark: {rows[-1]}')
    return rows


def size_epochs(seconds: float, img_per_sec: float, train_images: int, eval_images: int, max_epochs: int,
                safety: float = 0.85) -> int:
    """How many epochs of training (and one evaluation each, at about three times the training
    speed) fit in ``seconds``, with a margin; at least one, at most ``max_epochs``."""
    epoch_seconds = train_images / img_per_sec + eval_images / (3 * img_per_sec)
    return max(1, min(max_epochs, math.floor(safety * seconds / epoch_seconds)))


# ---- packing what has been trained -------------------------------------------------------------

def _pack(runs_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w') as tar:
        for path in sorted(runs_dir.rglob('*')):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(runs_dir)))
    return buffer.getvalue()


def write_snapshot(runs_dir: Path, output: Path, state: Dict[str, Any], part_size: int = PART_SIZE) -> None:
    """Pack ``runs_dir`` into ``output`` as ``zoo-<n>.tar.<k>`` parts and a manifest naming them.

    The manifest is renamed into place only after its parts are complete, and the previous
    snapshot's parts are removed only after that: killed at any moment, ``output`` holds one
    complete snapshot that its manifest describes.
    """
    output.mkdir(parents=True, exist_ok=True)
    previous = json.loads((output / MANIFEST).read_text()) if (output / MANIFEST).is_file() else None
    serial = (previous['serial'] + 1) if previous else 0
    archive = _pack(runs_dir)
    parts = []
    for k, offset in enumerate(range(0, len(archive), part_size)):
        chunk = archive[offset:offset + part_size]
        name = f'zoo-{serial}.tar.{k:03d}'
        tmp = output / f'{name}.tmp'
        tmp.write_bytes(chunk)
        os.replace(tmp, output / name)
        parts.append(dict(file=name, bytes=len(chunk), sha256=hashlib.sha256(chunk).hexdigest()))
    manifest = dict(state, serial=serial, archive_sha256=hashlib.sha256(archive).hexdigest(),
                    archive_bytes=len(archive), parts=parts)
    write_json_atomic(output / MANIFEST, manifest)
    if previous:
        for part in previous['parts']:
            (output / part['file']).unlink(missing_ok=True)


def unpack_snapshot(returned: Path, target: Path) -> Dict[str, Any]:
    """Check every part and the whole archive against the manifest in ``returned``, and unpack it
    into ``target``; returns the manifest."""
    manifest_file = Path(returned) / MANIFEST
    if not manifest_file.is_file():
        raise GpuZooError(f'{manifest_file} is missing: point at the folder the device call returned (its files_at).')
    manifest = json.loads(manifest_file.read_text())
    archive = bytearray()
    for part in manifest['parts']:
        path = Path(returned) / part['file']
        if not path.is_file():
            raise GpuZooError(f'{path} is missing; the device call did not return every part ({len(manifest["parts"])}).')
        chunk = path.read_bytes()
        actual = hashlib.sha256(chunk).hexdigest()
        if actual != part['sha256']:
            raise GpuZooError(f'{path} has SHA256 {actual}, the manifest says {part["sha256"]}: the part is damaged.')
        archive += chunk
    actual = hashlib.sha256(archive).hexdigest()
    if actual != manifest['archive_sha256']:
        raise GpuZooError(f'The reassembled archive has SHA256 {actual}, the manifest says {manifest["archive_sha256"]}.')
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(bytes(archive))) as tar:
        tar.extractall(target, filter='data')
    return manifest


# ---- the job ------------------------------------------------------------------------------------

def export_run(run_dir: Path, export_dir: Path) -> None:
    """A training run's newest weights (the EMA when kept) in fp16, with its args and summary."""
    from safetensors.torch import save_file
    from ..training.checkpoint import checkpoint_weights, read_checkpoint
    last = run_dir / LAST_CHECKPOINT
    state = checkpoint_weights(read_checkpoint(last), None, last)
    export_dir.mkdir(parents=True, exist_ok=True)
    tmp = export_dir / f'.{WEIGHTS}.tmp'
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(tmp), metadata={'format': 'pt'})
    os.replace(tmp, export_dir / WEIGHTS)
    for name in (ARGS_FILE, SUMMARY_FILE):
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, export_dir / name)


def _train_run(args: argparse.Namespace, record: Dict[str, Any], runs_dir: Path, snapshot, deadline: float) -> None:
    from ..training.train import train
    run_dir = Path(args.output) / args.experiment
    epoch_start = time.time()

    def after_epoch(epoch: int, metrics: Dict[str, float]) -> None:
        nonlocal epoch_start
        export_run(run_dir, runs_dir / record['name'])
        record.update(epochs_done=epoch + 1, eval_top1=metrics.get('eval_top1'))
        snapshot()
        epoch_seconds, epoch_start = time.time() - epoch_start, time.time()
        if epoch + 1 < args.epochs and time.time() + epoch_seconds > deadline:
            raise _TimeUp(f'stopped after epoch {epoch + 1} of {args.epochs}: the next would end past the deadline')

    try:
        train(args, epoch_callback=after_epoch)
        record['status'] = 'finished'
    except _TimeUp as stop:
        record['status'] = f'cut off: {stop}'


def run_job(plan: Plan, output: Path, time_budget: float, device: str, work_dir: Optional[Path] = None,
            part_size: int = PART_SIZE, calibration_seconds: float = 10.0) -> Dict[str, Any]:
    """Train ``plan`` within ``time_budget`` seconds from now, leaving snapshots in ``output``.

    Each run gets the share of the time still left that its ``share`` is of the shares still to
    run; a run that is slower than measured may run into the next one's time, never past the
    job's deadline.
    """
    import torch
    from ..training.data import load_split

    # Every run of a plan usually trains on the same data: load each split once to count it.
    count_images = functools.lru_cache(maxsize=None)(lambda *split: len(load_split(*split)))
    start = time.time()
    deadline = start + time_budget
    work_dir = Path(work_dir or tempfile.mkdtemp(prefix='gpu-zoo-'))
    runs_dir = work_dir / 'export'
    runs_dir.mkdir(parents=True, exist_ok=True)
    state: Dict[str, Any] = dict(
        started=time.strftime('%Y-%m-%dT%H:%M:%S'), device=device, time_budget_s=time_budget,
        torch=torch.__version__, gpu=torch.cuda.get_device_name(0) if device.startswith('cuda') else None,
        benchmarks=[], runs=[])

    def snapshot() -> None:
        write_snapshot(runs_dir, output, state, part_size)

    snapshot()
    if plan.benchmarks:
        state['benchmarks'] = run_benchmarks(plan, device)
        snapshot()
    for index, run in enumerate(plan.runs):
        remaining_share = sum(r.share for r in plan.runs[index:])
        run_deadline = time.time() + (deadline - time.time()) * run.share / remaining_share
        record: Dict[str, Any] = dict(name=run.name, status='not started')
        state['runs'].append(record)
        if run_deadline - time.time() < 3 * calibration_seconds:
            record['status'] = 'skipped: no time left'
            continue
        try:
            args = train_args(plan, run, work_dir / 'train', device)
            speed = measure_train_speed(args, calibration_seconds)
            train_images = count_images(args.dataset, args.train_split, args.data_dir)
            eval_images = count_images(args.dataset, args.val_split, args.data_dir) if args.val_split else 0
            max_epochs = args.epochs
            # Training compiles again (mostly from cache): budget the calibration's warm-up once more.
            args.epochs = size_epochs(run_deadline - time.time() - speed['warmup_s'], speed['img_per_sec'],
                                      train_images, eval_images, max_epochs)
            record.update(status='training', epochs_planned=args.epochs, epochs_max=max_epochs,
                          calibration_img_per_sec=round(speed['img_per_sec'], 1), warmup_s=round(speed['warmup_s'], 1),
                          seconds_allotted=round(run_deadline - time.time(), 1))
            _logger.info(f'{run.name}: {speed["img_per_sec"]:.0f} img/s measured; {args.epochs} epochs planned')
            snapshot()
            run_start = time.time()
            _train_run(args, record, runs_dir, snapshot, deadline)
            record['train_s'] = round(time.time() - run_start, 1)
        except Exception as err:  # one run's failure must not cost the runs after it
            record['status'] = f'failed: {type(err).__name__}: {err}'
            _logger.exception(f'{run.name} failed')
        snapshot()
    state.update(finished=time.strftime('%Y-%m-%dT%H:%M:%S'), wall_s=round(time.time() - start, 1))
    snapshot()
    return state


# ---- here: preparing the call and publishing what it returned ---------------------------------

def prepare(repo_root: Path, plan_file: Path, time_budget: int) -> str:
    """Put the data and wheels the job needs in git-ignored folders of ``repo_root``; returns the
    device command and the paths to carry."""
    from ..training.data.shared import verified_archive
    data = repo_root / DATA_FOLDER
    data.mkdir(exist_ok=True)
    archive, sha = verified_archive('cifar10-jpeg')
    if not (data / archive.name).is_file() or file_sha256(data / archive.name) != sha:
        shutil.copy(archive, data / archive.name)
    write_text_atomic(data / 'SHA256SUMS', f'{sha}  {archive.name}\n')
    wheels = repo_root / WHEEL_FOLDER
    if not any(wheels.glob('timm-*.whl')):
        subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--only-binary=:all:',
                        '--python-version', DEVICE_PYTHON, '--implementation', 'cp', '--platform', 'manylinux_2_28_x86_64',
                        '--platform', 'manylinux2014_x86_64', '-d', str(wheels), *DEVICE_WHEELS], check=True)
    exclude = repo_root / '.git' / 'info' / 'exclude'
    if exclude.parent.is_dir():
        lines = exclude.read_text().splitlines() if exclude.is_file() else []
        for folder in (f'/{DATA_FOLDER}/', f'/{WHEEL_FOLDER}/'):
            if folder not in lines:
                lines.append(folder)
        exclude.write_text('\n'.join(lines) + '\n')
    return device_command(plan_file, time_budget)


def device_command(plan_file: Path, time_budget: int) -> str:
    return (f'python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site {WHEEL_FOLDER}/*.whl && '
            f'PYTHONPATH=/tmp/site:. TIMM_FRELU_SHARED_DATA={DATA_FOLDER} PYTHONUNBUFFERED=1 '
            f'python3 -m timm_frelu.cli gpu-zoo run {plan_file} --output "$OUT" --time-budget {time_budget} '
            f'2>&1 | tee "$OUT/job.log"')


def publish_returned(returned: Path, work_dir: Path, output_root: Optional[Path] = None,
                     include_cut_off: bool = False, eval_datasets=None, data_dir: Optional[str] = None) -> List[Path]:
    """Check and unpack a device call's files, then publish its finished runs (and cut-off ones
    with ``include_cut_off``); returns the published folders."""
    from ..publishing.publish import DEFAULT_EVAL_DATASETS, publish
    manifest = unpack_snapshot(returned, work_dir)
    published = []
    for record in manifest['runs']:
        finished = record['status'] == 'finished'
        cut_off = record['status'].startswith('cut off') and record.get('epochs_done')
        run_dir = work_dir / record['name']
        if not (finished or (include_cut_off and cut_off)):
            print(f"gpu-zoo: not publishing {record['name']} ({record['status']})")
            continue
        published.append(publish(run_dir, record['name'], output_root=output_root,
                                  eval_datasets=eval_datasets or DEFAULT_EVAL_DATASETS, data_dir=data_dir))
    return published


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='timm-frelu gpu-zoo', description='Train a plan of models on a lent GPU in its minutes, and publish what comes back.')
    commands = parser.add_subparsers(dest='command', required=True)
    run = commands.add_parser('run', help='train a plan on this machine within a time budget (on the device)')
    run.add_argument('plan', help='plan YAML (zoo_configs/gpu/)')
    run.add_argument('--output', required=True, help='folder for the manifest and archive parts ($OUT on the device)')
    run.add_argument('--time-budget', type=float, required=True, help='seconds, from start to the last snapshot')
    run.add_argument('--device', default='cuda', help='cuda, or cpu for a test run')
    run.add_argument('--work-dir', default=None, help='training folders (default: a new temp folder)')
    run.add_argument('--part-size', type=int, default=PART_SIZE, help='bytes per archive part')
    run.add_argument('--calibration-seconds', type=float, default=10.0, help='speed measurement per run')
    prep = commands.add_parser('prepare', help='copy the data and wheels the device needs; print its command')
    prep.add_argument('plan', help='plan YAML, as the device command will name it')
    prep.add_argument('--time-budget', type=int, default=500)
    pub = commands.add_parser('publish', help='verify, unpack and publish what a device call returned')
    pub.add_argument('returned', help="the folder the device call's files came back to")
    pub.add_argument('--work-dir', default=None, help='where to unpack (default: output/gpu-zoo/<time>)')
    pub.add_argument('--output', default=None, help='checkpoints folder to publish into (default: the zoo\'s)')
    pub.add_argument('--include-cut-off', action='store_true', help='also publish runs the deadline cut short')
    pub.add_argument('--eval-dataset', nargs='+', default=None)
    pub.add_argument('--data-dir', default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    if args.command == 'run':
        state = run_job(load_plan(Path(args.plan)), Path(args.output), args.time_budget, args.device,
                        Path(args.work_dir) if args.work_dir else None, args.part_size, args.calibration_seconds)
        print(json.dumps(state, indent=2))
    elif args.command == 'prepare':
        command = prepare(Path.cwd(), Path(args.plan), args.time_budget)
        print(f'device command:\n{command}\ncarry: ["{DATA_FOLDER}", "{WHEEL_FOLDER}"]')
    else:
        work_dir = Path(args.work_dir or Path('output/gpu-zoo') / time.strftime('%Y%m%d-%H%M%S'))
        for folder in publish_returned(Path(args.returned), work_dir, Path(args.output) if args.output else None,
                                       args.include_cut_off, args.eval_dataset, args.data_dir):
            print(f'published {folder}')
    return 0

