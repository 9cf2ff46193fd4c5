#!/usr/bin/env python3
"""What rounding a run's weights for a lean snapshot costs: its size, in the file and as git keeps
it, against what the rounding changes in the network's outputs.

For a training checkpoint's model weights (what ``train-queue --snapshot`` keeps), each format of
``timm_frelu.training.lean_weights`` is written, read back and run on the first N images of the
CIFAR-10 JPEG train set (no augmentation, the model in eval mode), beside the exact weights:

* agreement: the share of images whose top-1 class is the exact weights' one;
* KL: the mean KL divergence of the rounded weights' class probabilities from the exact ones';
* top-1 on those training images, for scale.

Training images and no labels in the first two: this picks a storage format, so it reads no test set.

    python benchmarks/lean_snapshot.py ~/timm-frelu-runs/cpu-study/<run>/checkpoint-22.pth.tar [--images 2000]
"""
import argparse
import tempfile
import zlib
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import timm_frelu  # noqa: F401  (registers the models)
from timm_frelu.studies.measure import machine_description
from timm_frelu.training.checkpoint import read_checkpoint
from timm_frelu.training.data import TensorLoader, load_split
from timm_frelu.training.lean_weights import load_rounded_weights, save_rounded_weights

FORMATS = ((8, 64), (4, 64), (4, 256))


def logits(model: torch.nn.Module, batches: TensorLoader) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(images) for images, _ in batches])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoint', type=Path, help="a training checkpoint (.pth.tar) of the queue's runs")
    parser.add_argument('--images', type=int, default=2000)
    args = parser.parse_args()
    checkpoint = read_checkpoint(args.checkpoint)
    run_args, state = checkpoint['args'], checkpoint['state_dict']
    model = timm.create_model(run_args.model, num_classes=run_args.num_classes, **(run_args.model_kwargs or {})).eval()
    config = timm.data.resolve_model_data_config(model)
    data = load_split('shared/cifar10-jpeg', f'train[:{args.images}]')
    batches = TensorLoader(data.images, data.labels, batch_size=250, mean=config['mean'], std=config['std'],
                           channels_last=True)
    model.to(memory_format=torch.channels_last).load_state_dict(state)
    exact = logits(model, batches)
    params = sum(t.numel() for t in state.values() if t.is_floating_point() and t.dim() > 1)
    print(f'machine: {machine_description()}')
    print(f'{args.checkpoint} ({run_args.model}, epoch {checkpoint["epoch"] + 1} done, {params / 1e6:.2f} M rounded weights), '
          f'outputs on shared/cifar10-jpeg train[:{args.images}]')
    print(f'exact fp32: top-1 {(exact.argmax(1) == data.labels).float().mean() * 100:.2f}%, '
          f'file {sum(t.numel() * t.element_size() for t in state.values()) / 1e6:.1f} MB')
    with tempfile.TemporaryDirectory() as tmp:
        for bits, group in FORMATS:
            path = Path(tmp) / f'{bits}-{group}.safetensors'
            save_rounded_weights(state, path, bits=bits, group=group)
            model.load_state_dict(load_rounded_weights(path)[0])
            rounded = logits(model, batches)
            kl = F.kl_div(rounded.log_softmax(1), exact.log_softmax(1), log_target=True, reduction='batchmean')
            size, stored = path.stat().st_size, len(zlib.compress(path.read_bytes(), 6))
            print(f'{bits}-bit, groups of {group}: file {size / 1e6:.2f} MB, {stored / 1e6:.2f} MB zlib-compressed as git '
                  f'stores it; agreement {(rounded.argmax(1) == exact.argmax(1)).float().mean() * 100:.2f}%, KL {kl:.4f}, '
                  f'top-1 {(rounded.argmax(1) == data.labels).float().mean() * 100:.2f}%')


if __name__ == '__main__':
    main()
