#!/usr/bin/env python3
"""Data loading speed: timm_frelu's TensorLoader against the usual torchvision + PIL DataLoader.

Both produce the same training batches (pad-4 random crop, horizontal flip, normalisation) from
the shared CIFAR-10 JPEG copy; the model's own training speed is measured in the same run to
show whether loading could be the bottleneck.

    python benchmarks/loader.py [--batches 100] [--workers 2]
"""
import argparse
import time

import timm
import torch
from torchvision import datasets, transforms

import timm_frelu  # noqa: F401
from timm_frelu.studies.measure import interleaved_medians, machine_description, training_step
from timm_frelu.training.data import CIFAR10_MEAN, CIFAR10_STD, TensorLoader, load_split
from timm_frelu.training.data.shared import SHARED_ARCHIVES, unpacked_archive, verified_archive


def images_per_second(loader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # worker start-up and first-batch costs are not throughput
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        x, _ = next(iterator)
        seen += x.shape[0]
    return seen / (time.perf_counter() - start)


def model_train_images_per_second(batch_size: int, repeats: int = 5) -> float:
    model = timm.create_model('resnet20_frelu')
    return batch_size / interleaved_medians({'train': training_step(model, batch_size)}, repeats)['train']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batches', type=int, default=100)
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--workers', type=int, default=2)
    args = parser.parse_args()

    train = load_split('shared/cifar10-jpeg', 'train')
    tensor_loader = TensorLoader(train.images, train.labels, args.batch_size, CIFAR10_MEAN, CIFAR10_STD, train=True)
    archive, sha = verified_archive('cifar10-jpeg')
    folder = unpacked_archive(archive, sha) / 'train'
    pil_pipeline = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    pil_loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(str(folder), transform=pil_pipeline), batch_size=args.batch_size, shuffle=True,
        num_workers=args.workers, drop_last=True, persistent_workers=False)

    ours = images_per_second(tensor_loader, args.batches)
    baseline = images_per_second(pil_loader, args.batches)
    model = model_train_images_per_second(args.batch_size)
    print(f'machine: {machine_description()}')
    print(f'data: shared/cifar10-jpeg train ({SHARED_ARCHIVES["cifar10-jpeg"]}), batch {args.batch_size}, '
          f'{args.batches} batches, {torch.get_num_threads()} torch threads, {args.workers} DataLoader workers')
    print(f'torchvision+PIL DataLoader : {baseline:10.0f} img/s')
    print(f'TensorLoader               : {ours:10.0f} img/s')
    print(f'ratio TensorLoader / PIL   : {ours / baseline:10.1f}x')
    print(f'resnet20_frelu train step  : {model:10.0f} img/s  (TensorLoader is {ours / model:.0f}x faster than the model)')


if __name__ == '__main__':
    main()
