#!/usr/bin/env python3
"""Train timm models (FReLU or not) on CIFAR and image folders: timm's train.py, adapted.

Arguments keep timm's names and its two-stage parsing: ``-c recipe.yaml`` sets defaults that
command-line flags override. Batches come from an in-memory uint8 tensor and are augmented on
the training device (``timm_frelu.training.data.TensorLoader``), so data loading costs almost nothing
next to the model, even on two CPU cores.

Output folder (``--output``/``--experiment``): ``args.yaml``, ``summary.csv`` (one row per
epoch), ``last.pth.tar`` (every epoch, written to a temp file and renamed), ``model_best.pth.tar``
(by ``--eval-metric``) and the best ``checkpoint-<epoch>.pth.tar`` files.

``--resume <dir>/last.pth.tar`` continues a run into the same folder: model, optimizer, AMP
scaler, EMA weights, epoch and checkpoint history come from the checkpoint, the schedule is
re-derived from the epoch, and every random stream (data order, augmentation, dropout, mixup)
is re-seeded from ``(--seed, epoch)`` at each epoch start, so a resumed run repeats exactly what
the killed run would have done from that epoch on.

    python -m timm_frelu.train -c zoo_configs/cpu/resnet20_frelu_cifar10.yaml --dataset shared/cifar10-jpeg
    torchrun --nproc_per_node 2 -m timm_frelu.train -c recipe.yaml --device cpu
"""
import argparse
import logging
import os
import shutil
import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import yaml
from timm.data import Mixup, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import create_model, load_checkpoint, resume_checkpoint
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import (CheckpointSaver, ModelEmaV3, NativeScaler, ParseKwargs, dispatch_clip_grad, distribute_bn,
                        init_distributed_device, random_seed, setup_default_logging, update_summary)
from timm.utils.checkpoint_saver import load_checkpoint_metadata
from timm.utils.summary import trim_summary

from timm_frelu import FReLU  # importing timm_frelu registers the models
from timm_frelu.errors import TimmFreluError
from timm_frelu.fileio import YamlFileError, read_yaml_mapping, write_text_atomic
from timm_frelu.layers.cpu_kernels import cpu_kernels
from timm_frelu.models.registry import check_model_name
from timm_frelu.training.args import override_args
from timm_frelu.training.checkpoint import load_weights, read_checkpoint
from timm_frelu.training.data import DataError, TensorLoader, load_split
from timm_frelu.training.data.sources import check_same_size
from timm_frelu.training.evaluation import evaluate
from timm_frelu.training.optim import WEIGHT_DECAY_EXCLUDES, weight_decay_param_groups
from timm_frelu.training.run_folder import ARGS_FILE, LAST_CHECKPOINT, RECOVERY_PREFIX, SUMMARY_FILE, recovery_checkpoints

_logger = logging.getLogger('train')

config_parser = argparse.ArgumentParser(description='Training config', add_help=False)
config_parser.add_argument('-c', '--config', default='', metavar='FILE', help='YAML config file of argument defaults')


def build_parser() -> argparse.ArgumentParser:
    """The training arguments; a new parser each call, since -c files set its defaults."""
    parser = argparse.ArgumentParser(description='Train timm models on CIFAR and image folders')

    group = parser.add_argument_group('Dataset')
    group.add_argument('--data-dir', metavar='DIR', help='dataset root (torchvision layout, or an image folder with --dataset folder)')
    group.add_argument('--dataset', default='torch/cifar10', help='torch/cifar10, torch/cifar100, shared/cifar10-jpeg, shared/cifar10-lossless or folder')
    group.add_argument('--train-split', default='train', help='training split (folder name for image folders)')
    group.add_argument('--val-split', default='test', help='evaluation split; empty for none')
    group.add_argument('--dataset-download', action='store_true', help='download torchvision datasets if missing')
    group.add_argument('--img-size', type=int, default=None, help='resize every image to this square size when decoding')

    group = parser.add_argument_group('Model')
    group.add_argument('--model', default='resnet20_frelu', help='timm model name, with or without a tag')
    group.add_argument('--pretrained', action='store_true', help='start from pretrained weights')
    group.add_argument('--pretrained-path', default=None, help='load the pretrained weights from this file instead of the Hub')
    group.add_argument('--initial-checkpoint', default='', help='load this checkpoint into the model before training')
    group.add_argument('--resume', default='', help='resume a run from its last.pth.tar, into its own folder')
    group.add_argument('--no-resume-opt', action='store_true', help='do not restore the optimizer state when resuming')
    group.add_argument('--start-epoch', type=int, default=None,
                       help='start at this epoch of the schedule (with --initial-checkpoint: continue a run from its '
                            'weights alone, fresh optimizer state and EMA, into its own --output/--experiment folder)')
    group.add_argument('--num-classes', type=int, default=None, help='classifier size (default: the dataset\'s class count)')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, help='extra model arguments, key=value')
    group.add_argument('--drop', type=float, default=0.0, help='dropout rate before the classifier')
    group.add_argument('--drop-path', type=float, default=None, help='stochastic depth rate')
    group.add_argument('--channels-last', action='store_true', help='channels-last memory layout')
    group.add_argument('--grad-checkpointing', action='store_true', help='trade compute for activation memory')
    group.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor', help='torch.compile the model (backend)')
    group.add_argument('--sync-bn', action='store_true', help='synchronise BatchNorm statistics across DDP ranks')
    group.add_argument('--batch-size', '-b', type=int, default=128, help='batch size per process')
    group.add_argument('--validation-batch-size', '-vb', type=int, default=None, help='evaluation batch size (default: 2x batch size)')

    group = parser.add_argument_group('Optimizer')
    group.add_argument('--opt', default='sgd', help='optimizer, any of timm.optim')
    group.add_argument('--opt-eps', type=float, default=None)
    group.add_argument('--opt-betas', type=float, nargs='+', default=None)
    group.add_argument('--momentum', type=float, default=0.9)
    group.add_argument('--weight-decay', type=float, default=5e-4)
    group.add_argument('--weight-decay-exclude', default='norm_bias', choices=WEIGHT_DECAY_EXCLUDES,
                       help="parameters without weight decay: norm_bias (timm's: norm layers and biases), "
                            "norm_bias_funnel (also FReLU's depthwise kernels) or none")
    group.add_argument('--clip-grad', type=float, default=None, help='gradient clipping threshold')
    group.add_argument('--clip-mode', default='norm', help='norm, value or agc')

    group = parser.add_argument_group('Schedule')
    group.add_argument('--sched', default='cosine', help='any of timm.scheduler: cosine, step, multistep, ...')
    group.add_argument('--sched-on-updates', action='store_true', help='update the lr every step, not every epoch')
    group.add_argument('--lr', type=float, default=None, help='learning rate; overrides --lr-base when set')
    group.add_argument('--lr-base', type=float, default=0.1, help='lr = lr_base * global batch size / lr_base_size')
    group.add_argument('--lr-base-size', type=int, default=256, help='the batch size --lr-base is meant for')
    group.add_argument('--lr-base-scale', default='', help="linear or sqrt scaling with the batch size (default: sqrt for ada*/lamb, else linear)")
    group.add_argument('--epochs', type=int, default=200)
    group.add_argument('--decay-epochs', type=float, default=30)
    group.add_argument('--decay-milestones', type=int, nargs='+', default=[100, 150])
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1)
    group.add_argument('--warmup-epochs', type=int, default=0)
    group.add_argument('--warmup-lr', type=float, default=1e-5)
    group.add_argument('--warmup-prefix', action='store_true')
    group.add_argument('--min-lr', type=float, default=0)
    group.add_argument('--cooldown-epochs', type=int, default=0)

    group = parser.add_argument_group('Augmentation and regularisation')
    group.add_argument('--crop-padding', type=int, default=4, help='zero padding of the random crop; 0 disables it')
    group.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability')
    group.add_argument('--cutout', type=int, default=0, help='Cutout square size; 0 disables it')
    group.add_argument('--aa', default=None, help="policy: timm's rand-*/augmix-*/v0/original, or trivial")
    group.add_argument('--mixup', type=float, default=0.0, help='mixup alpha')
    group.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha')
    group.add_argument('--mixup-prob', type=float, default=1.0)
    group.add_argument('--mixup-switch-prob', type=float, default=0.5)
    group.add_argument('--mixup-mode', default='batch')
    group.add_argument('--mixup-off-epoch', type=int, default=0, help='turn mixup off from this epoch')
    group.add_argument('--smoothing', type=float, default=0.0, help='label smoothing')
    group.add_argument('--mean', type=float, nargs='+', default=None, help='override the normalisation mean')
    group.add_argument('--std', type=float, nargs='+', default=None, help='override the normalisation std')

    group = parser.add_argument_group('EMA')
    group.add_argument('--model-ema', action='store_true', help='keep an exponential moving average of the weights')
    group.add_argument('--model-ema-decay', type=float, default=0.999)
    group.add_argument('--model-ema-warmup', action='store_true')

    group = parser.add_argument_group('Run')
    group.add_argument('--seed', type=int, default=42)
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    group.add_argument('--dist-backend', default=None, help='DDP backend (default: nccl on CUDA, gloo on CPU)')
    group.add_argument('--dist-url', default=None)
    group.add_argument('--amp', action='store_true', help='mixed precision (on the CPU: bf16 autocast)')
    group.add_argument('--amp-if-native', action=argparse.BooleanOptionalAction, default=False,
                       help='mixed precision only where the device computes --amp-dtype natively (on the CPU: bf16 '
                            'on AMX or AVX512_BF16), fp32 elsewhere; the CPU recipes\' default')
    group.add_argument('--amp-dtype', default='bfloat16', choices=('bfloat16', 'float16'),
                       help='autocast dtype (the CPU supports bfloat16 only)')
    group.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    group.add_argument('--log-interval', type=int, default=50, help='steps between progress lines')
    group.add_argument('--checkpoint-hist', type=int, default=1, help='how many best checkpoint-<epoch> files to keep')
    group.add_argument('--recovery-interval', type=int, default=0, metavar='N',
                       help='every N batches within an epoch, write recovery-<epoch>-<batch>.pth.tar; --resume from it '
                            'goes on from that batch exactly (removed once the epoch\'s last.pth.tar is written)')
    group.add_argument('--eval-metric', default='top1', help='metric that picks the best checkpoint')
    group.add_argument('--output', default='output/train', help='parent folder of the run folders')
    group.add_argument('--experiment', default='', help='run folder name (default: date-model)')
    group.add_argument('--log-wandb', action='store_true', help='log to Weights & Biases, offline')
    return parser


class AtomicCheckpointSaver(CheckpointSaver):
    """timm's CheckpointSaver, but ``last.pth.tar`` and ``model_best.pth.tar`` are never absent:
    timm deletes the old file before renaming the new one over it (for Windows), so a run killed
    between the two had no ``last`` to resume from. On POSIX a rename replaces the old file whole."""

    def _replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def _duplicate(self, src: str, dst: str) -> None:
        tmp = f'{dst}.tmp{os.getpid()}'
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)

    # What the unfinished epoch had done, set while a recovery checkpoint is written.
    partial_epoch: Optional[Dict[str, Any]] = None

    def state_dict(self, epoch=None, metric=None):
        state = super().state_dict(epoch, metric)
        if self.partial_epoch is not None:
            state['partial_epoch'] = self.partial_epoch
        return state

    def save_partial_epoch(self, epoch: int, batches_done: int, loss_sum: float, seen: int, seconds: float) -> None:
        """timm's recovery checkpoint, with what a resume needs to go on from the same batch exactly
        (timm's own resume from one starts the next epoch, skipping the rest of this one): the
        epoch's running loss, and torch's random state for dropout and drop-path."""
        self.partial_epoch = dict(epoch=epoch, batches_done=batches_done, loss_sum=loss_sum, seen=seen, seconds=seconds,
                                  torch_rng_state=torch.get_rng_state())
        try:
            self.save_recovery(epoch, batch_idx=batches_done)
        finally:
            self.partial_epoch = None

    def remove_recovery(self) -> None:
        """Once an epoch's checkpoint is written, its recovery checkpoints are older than it."""
        for _, _, path in recovery_checkpoints(Path(self.recovery_dir)):
            path.unlink(missing_ok=True)
        self.curr_recovery_file = self.prev_recovery_file = ''


class NonFiniteLossError(TimmFreluError, RuntimeError):
    """The training loss became NaN or infinite."""


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    args_config, remaining = config_parser.parse_known_args(argv)
    parser = build_parser()
    if args_config.config:
        try:
            cfg = read_yaml_mapping(args_config.config, 'recipe (-c/--config)')
        except YamlFileError as err:
            parser.error(str(err))
        unknown = sorted(set(cfg) - {a.dest for a in parser._actions})
        if unknown:
            parser.error(f'{args_config.config} sets unknown arguments: {", ".join(unknown)}')
        parser.set_defaults(**cfg)
    args = parser.parse_args(remaining)
    args.config = args_config.config
    return args


def training_args(config: Optional[str] = None, **overrides: Any) -> argparse.Namespace:
    """The arguments the command line would give: the defaults, then the recipe ``config`` (a
    YAML file, as ``-c``), then ``overrides`` by their names (``batch_size=256``). How library code
    (the main job, sweeps, the GPU zoo job) describes a run to :func:`train`."""
    return override_args(parse_args(['-c', str(config)] if config else []), overrides, 'timm-frelu-train')


def check_args(args: argparse.Namespace) -> None:
    """Reject values that would fail deep inside torch or timm, naming the flag to fix."""
    for flag, value, minimum in (('--lr', args.lr, 0.0), ('--lr-base', args.lr_base, 0.0)):
        if value is not None and value <= minimum:
            raise ValueError(f'{flag} must be positive, got {value:g}.')
    for flag, value in (('--batch-size', args.batch_size), ('--epochs', args.epochs)):
        if value < 1:
            raise ValueError(f'{flag} must be at least 1, got {value}.')
    if args.weight_decay < 0:
        raise ValueError(f'--weight-decay must not be negative, got {args.weight_decay:g}.')
    if (args.amp or args.amp_if_native) and args.amp_dtype != 'bfloat16' and str(args.device).startswith('cpu'):
        raise ValueError(f'--amp-dtype {args.amp_dtype} is not supported on the CPU: use --amp-dtype bfloat16.')
    if args.sync_bn and str(args.device).startswith('cpu'):
        raise ValueError('--sync-bn needs GPUs (torch\'s SyncBatchNorm runs on CUDA only): on the CPU leave it out; '
                         'each process then keeps its own batch statistics.')
    check_model_name(args.model)


def scaled_lr(args: argparse.Namespace) -> float:
    """timm's rule: ``--lr-base`` scaled from ``--lr-base-size`` to the global batch size."""
    batch_ratio = args.batch_size * args.world_size / args.lr_base_size
    scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
    return args.lr_base * (batch_ratio ** 0.5 if scale == 'sqrt' else batch_ratio)


def computes_natively(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``device`` computes ``dtype`` matmuls and convolutions in hardware: on the CPU,
    bf16 where oneDNN has native bf16 kernels (AMX, AVX512_BF16); elsewhere it would be emulated,
    slower than fp32."""
    if device.type == 'cuda':
        return dtype == torch.float16 or torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == 'cpu' and dtype == torch.bfloat16:
        # torch has no public query. This private op, which torch's own CPU bf16 tests consult, is
        # also true on AVX-512 CPUs that oneDNN runs bf16 on by emulation, so the CPU's own flags
        # must show bf16 instructions too.
        query = getattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', None)
        return bool(query is not None and query() and _cpu_flags() & {'avx512_bf16', 'amx_bf16'})
    return False


def _cpu_flags() -> frozenset:
    """The instruction-set flags /proc/cpuinfo lists for this CPU (empty where it cannot be read)."""
    try:
        with open('/proc/cpuinfo') as f:
            return frozenset(next((line.split(':', 1)[1].split() for line in f if line.startswith('flags')), []))
    except OSError:
        return frozenset()


def autocast_dtype(args: argparse.Namespace, device: torch.device) -> Optional[torch.dtype]:
    """The dtype training autocasts to, or None for fp32: ``--amp`` always, ``--amp-if-native``
    where the device computes it natively."""
    dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    if args.amp or (args.amp_if_native and computes_natively(device, dtype)):
        return dtype
    return None


def precision_record(earlier: Dict[str, Any], start_epoch: int, precision: str) -> Dict[str, Any]:
    """args.yaml's precision fields: ``precision`` as a run-wide description, and
    ``precision_history``, the epoch each stretch of the run started at and its precision (a run
    resumed on another machine may train its later epochs in another precision)."""
    history = [stretch for stretch in earlier.get('precision_history') or [] if stretch['from_epoch'] < start_epoch]
    if not history or history[-1]['precision'] != precision:
        history.append(dict(from_epoch=start_epoch, precision=precision))
    if len(history) == 1:
        return dict(precision=precision, precision_history=history)
    ends = [stretch['from_epoch'] for stretch in history[1:]] + [None]
    described = ', '.join(f"{stretch['precision']} from epoch {stretch['from_epoch']}" + (f' to {end - 1}' if end else '')
                          for stretch, end in zip(history, ends))
    return dict(precision=described, precision_history=history)


def restart_record(earlier: Dict[str, Any], start_epoch: int, initial_checkpoint: Optional[str],
                   mid_epoch: bool = False) -> Dict[str, Any]:
    """args.yaml's ``restarts``: each epoch at which the run went on from weights alone
    (``--initial-checkpoint`` with ``--start-epoch``, as a queue restores a lean snapshot on a new
    machine), with fresh optimizer state and EMA. A later exact resume keeps them, though its own
    arguments no longer show them, so that a published card can say the run was not unbroken.
    ``mid_epoch``: the resume is from within ``start_epoch``, after a restart at its start."""
    restarts = list(earlier.get('restarts') or [])
    if earlier.get('initial_checkpoint') and earlier.get('start_epoch'):
        restarts.append(dict(epoch=earlier['start_epoch'], weights=Path(earlier['initial_checkpoint']).name))
    kept = {restart['epoch']: restart for restart in restarts
            if restart['epoch'] < start_epoch or (mid_epoch and restart['epoch'] == start_epoch)}
    if initial_checkpoint and start_epoch:
        kept[start_epoch] = dict(epoch=start_epoch, weights=Path(initial_checkpoint).name)
    return dict(restarts=[kept[epoch] for epoch in sorted(kept)]) if kept else {}


def _output_dir(args: argparse.Namespace) -> Path:
    if args.resume and not args.experiment:
        return Path(args.resume).resolve().parent
    name = args.experiment or '-'.join([time.strftime('%Y%m%d-%H%M%S'), args.model.replace('/', '_')])
    return Path(args.output) / name


class _TensorBoard:
    """TensorBoard scalars, when tensorboard is installed (the log lines are train_one_epoch's)."""

    def __init__(self, output_dir: Path) -> None:
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(output_dir / 'tensorboard'))
        except ImportError:
            _logger.debug('tensorboard is not installed; no TensorBoard logs')

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()


@dataclass
class _Run:
    """What the epoch loop works with, made once by :func:`train`."""
    model: nn.Module
    model_ema: Optional[ModelEmaV3]
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    lr_scheduler: Any
    autocast: Callable
    loss_scaler: Optional[NativeScaler]
    mixup_fn: Optional[Mixup]
    loader_train: TensorLoader
    loader_eval: Optional[TensorLoader]
    num_classes: int
    saver: Optional[AtomicCheckpointSaver]  # the primary process's only
    tensorboard: Optional[_TensorBoard]
    summary_csv: Path


def train_one_epoch(epoch: int, run: _Run, args: argparse.Namespace, num_updates: int = 0,
                    unfinished: Optional[Dict[str, Any]] = None):
    """One pass over the training loader, or the rest of an epoch cut short after a recovery
    checkpoint (``unfinished``: what that checkpoint had done of it); returns the epoch's metrics
    and the update count."""
    model, loader, optimizer = run.model, run.loader_train, run.optimizer
    model.train()
    # The loss is summed on the device and read back only at log steps: a read every step would
    # make a GPU wait for each step before queueing the next.
    loss_sum = unfinished['loss_sum'] if unfinished else None
    seen, start = (int(unfinished['seen']), time.time() - unfinished['seconds']) if unfinished else (0, time.time())
    batches_done = int(unfinished['batches_done']) if unfinished else 0
    for step, (images, targets) in enumerate(loader):
        if step < batches_done:
            # Trained before the recovery checkpoint. Drawn again all the same, so that the loader's
            # and mixup's random streams stand where they stood.
            if run.mixup_fn is not None:
                run.mixup_fn(images, targets)
            if step + 1 == batches_done:
                torch.set_rng_state(unfinished['torch_rng_state'])
            continue
        if run.mixup_fn is not None:
            images, targets = run.mixup_fn(images, targets)
        with run.autocast():
            loss = run.loss_fn(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        clip = dict(clip_grad=args.clip_grad, clip_mode=args.clip_mode, parameters=model.parameters())
        if run.loss_scaler is not None:
            run.loss_scaler(loss, optimizer, **clip)
        else:
            loss.backward()
            if args.clip_grad is not None:
                dispatch_clip_grad(model.parameters(), args.clip_grad, mode=args.clip_mode)
            optimizer.step()
        num_updates += 1
        if run.model_ema is not None:
            run.model_ema.update(model, step=num_updates)
        run.lr_scheduler.step_update(num_updates=num_updates)
        batch_loss = loss.detach().float() * images.shape[0]
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        seen += images.shape[0]
        if step % args.log_interval == 0 or step == len(loader) - 1:
            if not torch.isfinite(loss_sum):
                raise NonFiniteLossError(f'The training loss became {loss_sum.item()} at epoch {epoch}, by step {step}.')
            if args.rank == 0:
                lr = optimizer.param_groups[0]['lr']
                rate = seen * args.world_size / max(time.time() - start, 1e-9)
                _logger.info(
                    f'Train: {epoch} [{step + 1:>4d}/{len(loader)}]  loss {loss.item():.4f} '
                    f'(avg {loss_sum.item() / seen:.4f})  lr {lr:.3e}  {rate:.1f} img/s')
        if run.saver is not None and args.recovery_interval and (step + 1) % args.recovery_interval == 0 \
                and step + 1 < len(loader):
            run.saver.save_partial_epoch(epoch, step + 1, loss_sum.item(), seen, time.time() - start)
    epoch_time = time.time() - start
    return OrderedDict(loss=loss_sum.item() / max(seen, 1), epoch_time=epoch_time,
                       img_per_sec=seen * args.world_size / epoch_time), num_updates


def train(args: argparse.Namespace, epoch_callback: Optional[Callable[[int, Dict[str, float]], None]] = None) -> Path:
    """Run the training that ``args`` describes; returns the output folder.

    ``epoch_callback(epoch, metrics)`` runs after each epoch's checkpoint with the summary row's
    metrics (``train_loss``, ``eval_loss``, ``eval_top1``, ...); an exception it raises ends the run.
    """
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = init_distributed_device(args)
    random_seed(args.seed, args.rank)
    train_set, eval_set, num_classes = _load_data(args)
    model, data_config = _build_model(args, device, train_set, num_classes)
    _set_lr(args)
    optimizer = create_optimizer_v2(
        weight_decay_param_groups(model, args.weight_decay, args.weight_decay_exclude), **optimizer_kwargs(cfg=args))
    amp_dtype = autocast_dtype(args, device)
    # Autocast leaves the parameters, and so the optimizer and EMA state, in fp32.
    autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype) if amp_dtype else nullcontext
    loss_scaler = NativeScaler(device=device.type) if amp_dtype == torch.float16 else None
    precision = f'{str(amp_dtype).removeprefix("torch.")} autocast' if amp_dtype else 'float32'
    output_dir = _output_dir(args)
    start_epoch, saver_state = _resume(args, model, optimizer, loss_scaler)
    unfinished = saver_state.get('partial_epoch')
    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
        if args.resume:
            load_checkpoint(model_ema.module, args.resume, use_ema=True)
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile)
    if args.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)
    loader_train, loader_eval = _loaders(args, device, data_config, train_set, eval_set)
    loss_fn, mixup_fn = _loss(args, num_classes)
    lr_scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=len(loader_train))
    num_updates = start_epoch * len(loader_train) + (int(unfinished['batches_done']) if unfinished else 0)
    if num_updates > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(num_updates)
        else:
            lr_scheduler.step(start_epoch)

    run = _Run(model, model_ema, optimizer, loss_fn, lr_scheduler, autocast, loss_scaler, mixup_fn, loader_train,
               loader_eval, num_classes, None, None, output_dir / SUMMARY_FILE)
    if args.rank == 0:
        _start_records(args, run, output_dir, start_epoch, saver_state, precision, train_set, eval_set)
        within = f', batch {int(unfinished["batches_done"]) + 1} of {len(loader_train)}' if unfinished else ''
        _logger.info(f'Training {args.model} ({num_classes} classes) on {args.dataset}/{args.train_split} '
                     f'({len(train_set)} images) for {num_epochs} epochs from epoch {start_epoch}{within} in {precision}; '
                     f'output in {output_dir}')
    try:
        _train_epochs(args, run, start_epoch, num_epochs, num_updates, epoch_callback, unfinished)
    except NonFiniteLossError as err:
        last = output_dir / LAST_CHECKPOINT
        kept = f'the last good checkpoint, {last}, is kept' if last.exists() else 'no checkpoint had been written yet'
        raise NonFiniteLossError(
            f'{err} Training stopped; {kept}. Lower --lr, add --clip-grad, or check the data, then '
            f'continue with --resume {last}.') from None
    finally:
        if args.distributed:
            torch.distributed.destroy_process_group()
    return output_dir


def _load_data(args: argparse.Namespace):
    """The training and evaluation sets (the latter None without --val-split) and the class count."""
    train_set = load_split(args.dataset, args.train_split, args.data_dir, args.dataset_download, args.img_size)
    eval_set = load_split(args.dataset, args.val_split, args.data_dir, args.dataset_download, args.img_size) if args.val_split else None
    check_same_size([s for s in (train_set, eval_set) if s is not None])
    num_classes = args.num_classes or len(train_set.classes)
    if int(train_set.labels.max()) >= num_classes:
        raise DataError(f'The data has {len(train_set.classes)} classes but --num-classes is {num_classes}.')
    return train_set, eval_set, num_classes


def _build_model(args: argparse.Namespace, device: torch.device, train_set, num_classes: int):
    """The model on ``device``, in its layout, with its weights (pretrained or initial), and its data config."""
    model = create_model(
        args.model,
        pretrained=args.pretrained,
        pretrained_cfg_overlay=dict(file=args.pretrained_path) if args.pretrained_path else None,
        num_classes=num_classes,
        drop_rate=args.drop,
        **({'drop_path_rate': args.drop_path} if args.drop_path is not None else {}),
        **args.model_kwargs,
    )
    if args.initial_checkpoint:
        load_weights(model, Path(args.initial_checkpoint))
    data_config = resolve_data_config(vars(args), model=model)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
        if device.type == 'cpu' and any(isinstance(m, FReLU) for m in model.modules()):
            cpu_kernels()  # built (once per machine) here, with its message, not inside the first step
    # Lazy layers (act_layer='frelu' in timm models) need one forward before the optimizer.
    with torch.no_grad():
        model.eval()(train_set.images[:2].float().to(device))
    if args.distributed and args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, data_config


def _set_lr(args: argparse.Namespace) -> None:
    if not args.lr:
        args.lr = scaled_lr(args)
        if args.rank == 0:
            _logger.info(f'Learning rate {args.lr:g} from --lr-base {args.lr_base:g} at batch {args.lr_base_size} '
                         f'and a global batch of {args.batch_size * args.world_size}.')


def _resume(args: argparse.Namespace, model: nn.Module, optimizer, loss_scaler) -> Tuple[int, Dict[str, Any]]:
    """The epoch to start from, and the checkpoint saver's state ({} without --resume): --resume's
    checkpoint loaded into the model and optimizer, or --start-epoch. A recovery checkpoint starts
    within the epoch it was written in, its state's ``partial_epoch`` saying how far that got,
    unless --start-epoch overrides it (timm's precedence), which drops the partial epoch."""
    if not args.resume:
        return args.start_epoch or 0, {}
    if not Path(args.resume).is_file():
        raise FileNotFoundError(f'--resume {args.resume}: no such checkpoint. Point it at a run folder\'s last.pth.tar.')
    read_checkpoint(Path(args.resume))  # a damaged file is a clear error before timm reads it
    resume_epoch = resume_checkpoint(
        model, args.resume, optimizer=None if args.no_resume_opt else optimizer,
        loss_scaler=loss_scaler, log_info=args.rank == 0) or 0
    saver_state = dict(load_checkpoint_metadata(args.resume).get('saver', {}))
    if args.start_epoch is not None:
        saver_state.pop('partial_epoch', None)
        return args.start_epoch, saver_state
    unfinished = saver_state.get('partial_epoch')
    return (int(unfinished['epoch']) if unfinished else resume_epoch), saver_state


def _loaders(args: argparse.Namespace, device: torch.device, data_config, train_set, eval_set):
    loader_kwargs = dict(mean=data_config['mean'], std=data_config['std'], device=device, seed=args.seed,
                         rank=args.rank, world_size=args.world_size, channels_last=args.channels_last)
    loader_train = TensorLoader(
        train_set.images, train_set.labels, args.batch_size, train=True, crop_padding=args.crop_padding,
        hflip=args.hflip > 0, cutout_size=args.cutout, auto_augment=args.aa, **loader_kwargs)
    loader_eval = None
    if eval_set is not None:
        loader_eval = TensorLoader(
            eval_set.images, eval_set.labels, args.validation_batch_size or 2 * args.batch_size, **loader_kwargs)
    if len(loader_train) == 0:  # it drops a partial last batch
        raise DataError(f'{len(train_set)} training images make no full batch of {args.batch_size}; lower --batch-size.')
    return loader_train, loader_eval


def _loss(args: argparse.Namespace, num_classes: int):
    """The training loss, and the mixup/cutmix that goes with a soft-target loss."""
    if args.mixup > 0 or args.cutmix > 0:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                         switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=num_classes)
        return SoftTargetCrossEntropy(), mixup_fn
    if args.smoothing:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing), None
    return nn.CrossEntropyLoss(), None


def _start_records(args: argparse.Namespace, run: _Run, output_dir: Path, start_epoch: int, saver_state: Dict[str, Any],
                   precision: str, train_set, eval_set) -> None:
    """The primary process's records: args.yaml, the checkpoint saver (with ``saver_state``, a
    resume's), the summary trimmed to the start epoch, TensorBoard and W&B."""
    output_dir.mkdir(parents=True, exist_ok=True)
    earlier = read_yaml_mapping(output_dir / ARGS_FILE, 'args.yaml') if (output_dir / ARGS_FILE).is_file() else {}
    earlier = earlier if args.resume or start_epoch else {}
    args_record = dict(vars(args), num_classes=run.num_classes, train_data=train_set.source,
                       eval_data=eval_set.source if eval_set else None, **precision_record(earlier, start_epoch, precision),
                       **restart_record(earlier, start_epoch, args.initial_checkpoint, 'partial_epoch' in saver_state))
    write_text_atomic(output_dir / ARGS_FILE, yaml.safe_dump(args_record, sort_keys=False))
    run.saver = AtomicCheckpointSaver(run.model, run.optimizer, args=args, model_ema=run.model_ema,
                                      amp_scaler=run.loss_scaler, recovery_prefix=RECOVERY_PREFIX, checkpoint_dir=str(output_dir),
                                      recovery_dir=str(output_dir), decreasing='loss' in args.eval_metric,
                                      max_history=args.checkpoint_hist)
    if args.resume:
        run.saver.load_state_dict(saver_state)
    trim_summary(str(run.summary_csv), start_epoch)
    run.tensorboard = _TensorBoard(output_dir)
    if args.log_wandb:
        _init_wandb(args, output_dir)


def _train_epochs(args: argparse.Namespace, run: _Run, start_epoch: int, num_epochs: int, num_updates: int,
                  epoch_callback: Optional[Callable[[int, Dict[str, float]], None]],
                  unfinished: Optional[Dict[str, Any]] = None) -> None:
    for epoch in range(start_epoch, num_epochs):
        random_seed(args.seed + epoch, args.rank)  # every random stream is a function of (seed, epoch)
        run.loader_train.set_epoch(epoch)
        if run.mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            run.mixup_fn.mixup_enabled = False
        train_metrics, num_updates = train_one_epoch(epoch, run, args, num_updates, unfinished if epoch == start_epoch else None)
        if args.distributed and not args.sync_bn:
            distribute_bn(run.model, args.world_size, reduce=True)

        eval_metrics = OrderedDict()
        if run.loader_eval is not None:
            evaluated = run.model_ema.module if run.model_ema is not None else run.model
            metrics = evaluate(evaluated, run.loader_eval, run.num_classes, autocast=run.autocast)
            eval_metrics = OrderedDict((k, metrics[k]) for k in ('loss', 'top1', 'top5'))
        lr = run.optimizer.param_groups[0]['lr']
        run.lr_scheduler.step(epoch + 1, eval_metrics.get(args.eval_metric.replace('eval_', ''), None))

        if args.rank == 0:
            update_summary(epoch, train_metrics, eval_metrics, filename=str(run.summary_csv), lr=lr,
                           log_wandb=args.log_wandb and _wandb_ready())
            run.tensorboard.scalars(epoch, {**{f'train/{k}': v for k, v in train_metrics.items()},
                                            **{f'eval/{k}': v for k, v in eval_metrics.items()}, 'lr': lr})
            best_metric, best_epoch = run.saver.save_checkpoint(epoch, metric=eval_metrics.get(args.eval_metric))
            run.saver.remove_recovery()
            _logger.info(
                f'Epoch {epoch}: train loss {train_metrics["loss"]:.4f}, '
                + (f'eval top-1 {eval_metrics["top1"]:.2f}%, ' if eval_metrics else '')
                + f'{train_metrics["img_per_sec"]:.1f} img/s, {train_metrics["epoch_time"]:.1f} s'
                + (f'; best {args.eval_metric} {best_metric:.2f} (epoch {best_epoch})' if best_metric is not None else ''))
        if epoch_callback is not None:
            epoch_callback(epoch, {**{f'train_{k}': v for k, v in train_metrics.items()},
                                   **{f'eval_{k}': v for k, v in eval_metrics.items()}})


def _wandb_ready() -> bool:
    try:
        import wandb
        return wandb.run is not None
    except ImportError:
        return False


def _init_wandb(args: argparse.Namespace, output_dir: Path) -> None:
    try:
        import wandb
    except ImportError:
        _logger.warning('--log-wandb was given but wandb is not installed (pip install wandb); not logging to W&B.')
        return
    wandb.init(project='timm-frelu', name=output_dir.name, config=vars(args), dir=str(output_dir), mode='offline')


def main(argv: Optional[List[str]] = None) -> int:
    setup_default_logging()
    train(parse_args(argv))
    return 0

