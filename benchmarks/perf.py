#!/usr/bin/env python3
"""FReLU's cost against its ReLU twin, measured in one run on this machine.

For each architecture: ReLU, the naive FReLU (the reference ops), the default FReLU (custom
autograd function) and the fused FReLU (``timm_frelu.fuse``, inference only); with
``--compile``, also ReLU and FReLU under ``torch.compile``. Eager mode otherwise, channels_last, fp32. Every figure is the median of several repeats after a warm-up, and is
printed as a ratio to the ReLU model of the same run:

* train images/s: one SGD step (forward, backward, update);
* eval images/s: one forward pass under ``torch.no_grad``;
* activation memory: bytes of the tensors autograd keeps for backward during one training
  forward (storage counted once), the memory a training step holds on to.

    python benchmarks/perf.py [--archs resnet20 resnet56 resnet18 resnet50] [--repeats 5] [--compile]
"""
import argparse
import statistics
import time
from typing import Callable, Dict

import timm
import torch

import timm_frelu
from timm_frelu import FReLU

BATCH = {'resnet20': 128, 'resnet56': 128, 'resnet18': 64, 'resnet50': 32}


def _median_seconds(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up: allocator, kernels, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    seen: Dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(size for ptr, size in seen.items() if ptr not in parameters and ptr != x.untyped_storage().data_ptr())


def measure(model: torch.nn.Module, batch: int, repeats: int, train: bool = True, compile: bool = False) -> Dict[str, float]:
    model = model.to(memory_format=torch.channels_last)
    # The warm-up step of each mode pays for compilation, so the medians time only compiled code.
    forward = torch.compile(model) if compile else model
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    results = {}
    if train:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()

        def train_step():
            loss = torch.nn.functional.cross_entropy(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        results['train'] = batch / _median_seconds(train_step, repeats)
        results['memory'] = saved_activation_bytes(forward, x)
    model.eval()

    def eval_step():
        with torch.no_grad():
            forward(x)

    results['eval'] = batch / _median_seconds(eval_step, repeats)
    return results


def _frelu_model(arch: str, efficient: bool) -> torch.nn.Module:
    model = timm.create_model(f'{arch}_frelu')
    for module in model.modules():
        if isinstance(module, FReLU):
            module.efficient = efficient
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--archs', nargs='+', default=list(BATCH))
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--compile', action='store_true',
                        help='also time torch.compile (inductor) of ReLU and of FReLU (the reference ops, which is what FReLU runs under compile)')
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, eager unless named compiled, channels_last, fp32, 32x32 input; '
          f'median of {args.repeats} after a warm-up')
    print('| arch (batch) | variant | train img/s | ratio | eval img/s | ratio | activation MiB | ratio |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- |')
    for arch in args.archs:
        batch = BATCH.get(arch, 64)
        relu = measure(timm.create_model(f'{arch}_relu'), batch, args.repeats)
        naive_model = _frelu_model(arch, efficient=False)
        variants = {
            'ReLU': relu,
            'FReLU, naive': measure(naive_model, batch, args.repeats),
            'FReLU': measure(_frelu_model(arch, efficient=True), batch, args.repeats),
            'FReLU, fused': measure(timm_frelu.fuse(naive_model), batch, args.repeats, train=False),
            'ReLU, fused': measure(timm_frelu.fuse(timm.create_model(f'{arch}_relu')), batch, args.repeats, train=False),
        }
        if args.compile:
            variants['ReLU, compiled'] = measure(timm.create_model(f'{arch}_relu'), batch, args.repeats, compile=True)
            variants['FReLU, compiled'] = measure(_frelu_model(arch, efficient=True), batch, args.repeats, compile=True)
        for name, r in variants.items():
            train = f"{r['train']:.1f} | {relu['train'] / r['train']:.2f}" if 'train' in r else '- | -'
            memory = f"{r['memory'] / 2 ** 20:.1f} | {r['memory'] / relu['memory']:.2f}" if 'memory' in r else '- | -'
            print(f"| {arch} ({batch}) | {name} | {train} | {r['eval']:.1f} | {relu['eval'] / r['eval']:.2f} | {memory} |")
    print('ratio: time per image (or memory) relative to the ReLU model; below 1 is faster (or smaller).')


if __name__ == '__main__':
    main()
