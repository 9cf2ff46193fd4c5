#!/usr/bin/env python3
"""Evaluate a model on a dataset split: top-1, top-5, loss and per-class accuracy.

The model is a registered name (with ``--pretrained`` for its tag's weights), an
``hf-hub:ORG/NAME`` or ``local-dir:PATH`` name, or any name plus ``--checkpoint FILE`` (a
training checkpoint or a ``.safetensors`` file). The results, with the SHA256 of the weights
file and of the evaluated pixels, are printed as a table and written as JSON with
``--results-file``.

    python -m timm_frelu.validate --model resnet20_frelu --checkpoint output/train/run/model_best.pth.tar \\
        --dataset shared/cifar10-lossless --results-file results.json
"""
import argparse
import logging
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml
from timm.data import resolve_data_config
from timm.models import create_model
from timm.utils import ParseKwargs, setup_default_logging

import timm_frelu  # noqa: F401  registers the FReLU models
from timm_frelu.fileio import file_sha256, write_json_atomic
from timm_frelu.models.registry import check_model_name
from timm_frelu.training.args import override_args
from timm_frelu.training.checkpoint import load_weights
from timm_frelu.training.data import DataError, TensorLoader, load_split
from timm_frelu.training.evaluation import evaluate
from timm_frelu.training.run_folder import ARGS_FILE, SUMMARY_FILE

_logger = logging.getLogger('validate')

parser = argparse.ArgumentParser(description='Evaluate a timm model on CIFAR or an image folder')
parser.add_argument('--model', default='resnet20_frelu', help='model name, hf-hub:ORG/NAME or local-dir:PATH')
parser.add_argument('--pretrained', action='store_true', help="load the model name's pretrained weights")
parser.add_argument('--checkpoint', default='', help='weights file: a training checkpoint or .safetensors')
parser.add_argument('--use-ema', action='store_true', help="use a training checkpoint's EMA weights")
parser.add_argument('--num-classes', type=int, default=None, help="classifier size (default: the model's)")
parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
parser.add_argument('--data-dir', default=None)
parser.add_argument('--dataset', default='torch/cifar10')
parser.add_argument('--split', default='test')
parser.add_argument('--dataset-download', action='store_true')
parser.add_argument('--img-size', type=int, default=None)
parser.add_argument('--batch-size', '-b', type=int, default=256)
parser.add_argument('--tta-flip', action='store_true', help='average the logits of each image and its mirror')
parser.add_argument('--amp', action='store_true', help='bfloat16 autocast')
parser.add_argument('--channels-last', action='store_true')
parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
parser.add_argument('--threads', type=int, default=None)
parser.add_argument('--results-file', default='', help='write the results as JSON here')


def validation_args(**overrides: Any) -> argparse.Namespace:
    """The evaluation arguments: the command line's defaults, then ``overrides`` by their names
    (``model='resnet20_frelu'``, ``checkpoint=PATH``, ``dataset=...``), for :func:`validate`."""
    return override_args(parser.parse_args([]), overrides, 'timm-frelu-validate')


def validate(args: argparse.Namespace) -> Dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f'--checkpoint {args.checkpoint}: no such file.')
    if args.batch_size < 1:
        raise ValueError(f'--batch-size must be at least 1, got {args.batch_size}.')
    check_model_name(args.model)
    model_args = dict(args.model_kwargs)
    if args.num_classes is not None:
        model_args['num_classes'] = args.num_classes
    model = create_model(args.model, pretrained=args.pretrained, **model_args)
    weights_file = _weights_file(args, model)
    if args.checkpoint:
        load_weights(model, Path(args.checkpoint), use_ema=args.use_ema)
    model.to(device).eval()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

    data = load_split(args.dataset, args.split, args.data_dir, args.dataset_download, args.img_size)
    num_classes = model.num_classes
    if int(data.labels.max()) >= num_classes:
        raise DataError(
            f'{args.dataset}/{args.split} has {len(data.classes)} classes but the model predicts {num_classes}; '
            f'evaluate a model trained on this data, or pass --num-classes.')
    data_config = resolve_data_config({}, model=model)
    loader = TensorLoader(data.images, data.labels, args.batch_size, data_config['mean'], data_config['std'],
                          device=device, channels_last=args.channels_last)
    autocast = partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16) if args.amp else nullcontext
    metrics = evaluate(model, loader, num_classes, autocast=autocast, tta_flip=args.tta_flip)

    class_names = data.classes + [f'class_{i}' for i in range(len(data.classes), num_classes)]
    return dict(
        training=_training_run(weights_file),
        model=args.model,
        weights=dict(
            file=str(weights_file.resolve()) if weights_file else None,
            sha256=file_sha256(weights_file) if weights_file else None,
            ema=args.use_ema,
            source='checkpoint' if args.checkpoint else ('pretrained' if args.pretrained else 'random init'),
        ),
        params=sum(p.numel() for p in model.parameters()),
        data=data.source,
        tta_flip=args.tta_flip,
        top1=metrics['top1'],
        top5=metrics['top5'],
        loss=metrics['loss'],
        count=metrics['count'],
        per_class_top1=dict(zip(class_names, metrics['per_class_top1'])),
    )


def _weights_file(args: argparse.Namespace, model: torch.nn.Module) -> Optional[Path]:
    """The file the weights came from, where there is one on this machine."""
    if args.checkpoint:
        return Path(args.checkpoint)
    location = model.pretrained_cfg.get('file') if args.pretrained else None
    if not location:
        return None
    path = Path(location)
    if path.is_dir():  # local-dir: models
        path = next((path / name for name in ('model.safetensors', 'pytorch_model.bin') if (path / name).is_file()), None)
    return path


def _training_run(weights_file: Optional[Path]) -> Optional[Dict[str, Any]]:
    """What a weights file's training run folder says of it: its args and per-epoch summary."""
    if weights_file is None or not (weights_file.parent / ARGS_FILE).is_file():
        return None
    run = yaml.safe_load((weights_file.parent / ARGS_FILE).read_text())
    summary = weights_file.parent / SUMMARY_FILE
    return dict(
        run_dir=str(weights_file.parent.resolve()),
        summary_csv=str(summary.resolve()) if summary.is_file() else None,
        **{key: run.get(key) for key in ('model', 'dataset', 'seed', 'epochs', 'config')},
    )


def format_results(results: Dict[str, Any]) -> str:
    data = results['data']
    lines = [
        f"model    {results['model']}  ({results['params'] / 1e6:.3f} M params)",
        f"weights  {results['weights']['file'] or results['weights']['source']}",
        f"data     {data['dataset']}/{data['split']}: {results['count']} images, pixels sha256 {data['content_sha256'][:16]}",
        f"top-1    {results['top1']:.2f} %",
        f"top-5    {results['top5']:.2f} %",
        f"loss     {results['loss']:.4f}",
        'per-class top-1: ' + ', '.join(f'{name} {acc:.1f}' for name, acc in results['per_class_top1'].items()),
    ]
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    setup_default_logging()
    args = parser.parse_args(argv)
    results = validate(args)
    print(format_results(results))
    if args.results_file:
        write_json_atomic(Path(args.results_file), results)
        print(f'results written to {args.results_file}')
    return 0

