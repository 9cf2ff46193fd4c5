#!/usr/bin/env python3
"""FReLU's cost against its ReLU twin, measured in one run on this machine.

For each architecture: ReLU, the naive FReLU (the reference ops), the default FReLU (custom
autograd function) and the fused FReLU (``timm_frelu.fuse``, inference only), in fp32; ReLU and
FReLU under bf16 autocast (by default where the CPU computes bf16 natively); both models as
created on a plain NCHW batch; with ``--compile``, ReLU and FReLU under ``torch.compile``. Eager
mode and channels_last unless named otherwise. Every figure is the median of several repeats
after a warm-up, the variants timed in turn within each repeat, and is printed as a ratio to the
ReLU model of the same run and precision:

* train images/s: one SGD step (forward, backward, update);
* eval images/s: one forward pass under ``torch.no_grad``;
* activation memory: bytes of the tensors autograd keeps for backward during one training
  forward (storage counted once), the memory a training step holds on to.

    python benchmarks/perf.py [--archs resnet20 resnet56 resnet18 resnet50] [--repeats 5] [--bf16 auto|on|off] [--compile]
"""
import argparse
from contextlib import nullcontext
from typing import Callable, Dict, Optional, Tuple

import timm
import torch

import timm_frelu
from timm_frelu import FReLU
from timm_frelu.studies.measure import (inference_step, interleaved_medians, machine_description,
                                        saved_activation_bytes, training_step)
from timm_frelu.training.train import computes_natively

BATCH = {'resnet20': 128, 'resnet56': 128, 'resnet18': 64, 'resnet50': 32}
BF16 = ', bf16'


def variant(model: torch.nn.Module, batch: int, train: bool = True, compile: bool = False, channels_last: bool = True,
            autocast_dtype: Optional[torch.dtype] = None) -> Tuple[Dict[str, Callable[[], None]], Optional[Callable[[], int]]]:
    """One variant's timed steps (a training step: forward, backward, SGD update, unless ``train``
    is off; an inference forward) and, when it trains, its activation-memory probe."""
    timed = {'eval': inference_step(model, batch, channels_last=channels_last, compile=compile,
                                    autocast_dtype=autocast_dtype)}
    if not train:
        return timed, None
    timed['train'] = training_step(model, batch, channels_last=channels_last, compile=compile,
                                   autocast_dtype=autocast_dtype)
    forward = torch.compile(model) if compile else model
    x = torch.randn(batch, 3, 32, 32)
    x = x.to(memory_format=torch.channels_last) if channels_last else x
    autocast = (lambda: torch.autocast('cpu', dtype=autocast_dtype)) if autocast_dtype else nullcontext

    def memory() -> int:
        model.train()
        with autocast():
            return saved_activation_bytes(forward, x, model.parameters())
    return timed, memory


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
    parser.add_argument('--bf16', choices=('auto', 'on', 'off'), default='auto',
                        help='bf16 autocast rows: auto (where the CPU computes bf16 natively), on or off')
    parser.add_argument('--compile', action='store_true',
                        help='also time torch.compile (inductor) of ReLU and of FReLU (the reference ops, which is what FReLU runs under compile)')
    args = parser.parse_args()
    native_bf16 = computes_natively(torch.device('cpu'), torch.bfloat16)
    bf16 = args.bf16 == 'on' or (args.bf16 == 'auto' and native_bf16)
    torch.manual_seed(0)
    print(f'machine: {machine_description()}, native bf16: {"yes" if native_bf16 else "no"}')
    print(f'eager unless named compiled, channels_last unless named NCHW, fp32 unless named bf16 (autocast), 32x32 input; '
          f'median of {args.repeats}, variants timed in turn, after a warm-up')
    print('| arch (batch) | variant | train img/s | ratio | eval img/s | ratio | activation MiB | ratio |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- |')
    summaries = []
    for arch in args.archs:
        batch = BATCH.get(arch, 64)
        naive_model = _frelu_model(arch, efficient=False)
        variants = {
            'ReLU': variant(timm.create_model(f'{arch}_relu'), batch),
            'FReLU, naive': variant(naive_model, batch),
            'FReLU': variant(_frelu_model(arch, efficient=True), batch),
            'FReLU, fused': variant(timm_frelu.fuse(naive_model), batch, train=False),
            'ReLU, fused': variant(timm_frelu.fuse(timm.create_model(f'{arch}_relu')), batch, train=False),
            # The default path: a model as created, called on an ordinary NCHW batch.
            'ReLU, NCHW': variant(timm.create_model(f'{arch}_relu'), batch, channels_last=False),
            'FReLU, NCHW': variant(_frelu_model(arch, efficient=True), batch, channels_last=False),
        }
        if bf16:
            variants['ReLU' + BF16] = variant(timm.create_model(f'{arch}_relu'), batch, autocast_dtype=torch.bfloat16)
            variants['FReLU' + BF16] = variant(_frelu_model(arch, efficient=True), batch, autocast_dtype=torch.bfloat16)
        if args.compile:
            variants['ReLU, compiled'] = variant(timm.create_model(f'{arch}_relu'), batch, compile=True)
            variants['FReLU, compiled'] = variant(_frelu_model(arch, efficient=True), batch, compile=True)
        seconds = interleaved_medians(
            {(name, kind): step for name, (timed, _) in variants.items() for kind, step in timed.items()}, args.repeats)
        results = {name: {kind: batch / seconds[name, kind] for kind in timed} for name, (timed, _) in variants.items()}
        for name, (_, memory) in variants.items():
            if memory is not None:
                results[name]['memory'] = memory()
        for name, r in results.items():
            base = results['ReLU' + BF16 if name.endswith(BF16) else 'ReLU']
            train = f"{r['train']:.1f} | {base['train'] / r['train']:.2f}" if 'train' in r else '- | -'
            memory = f"{r['memory'] / 2 ** 20:.1f} | {r['memory'] / base['memory']:.2f}" if 'memory' in r else '- | -'
            print(f"| {arch} ({batch}) | {name} | {train} | {r['eval']:.1f} | {base['eval'] / r['eval']:.2f} | {memory} |")
        summaries.append(_summary(arch, results))
    print('ratio: time per image (or memory) relative to the ReLU model of the same precision, channels_last; '
          'below 1 is faster (or smaller).')
    print('FReLU time / ReLU time in training (eval):')
    print('\n'.join(summaries))


def _summary(arch: str, results: Dict[str, Dict[str, float]]) -> str:
    """The like-for-like ratios (both models in one layout and precision) beside the as-created one
    (an NCHW batch: FReLU's stem moves it to channels_last, ReLU's twin stays NCHW), and what bf16
    gains FReLU."""
    def ratio(frelu: str, relu: str) -> str:
        return (f"{results[relu]['train'] / results[frelu]['train']:.2f} "
                f"({results[relu]['eval'] / results[frelu]['eval']:.2f})")
    parts = [f'fp32 both channels_last {ratio("FReLU", "ReLU")}',
             f'fp32 as created on an NCHW batch {ratio("FReLU, NCHW", "ReLU, NCHW")}']
    if 'FReLU' + BF16 in results:
        parts.append(f'bf16 both channels_last {ratio("FReLU" + BF16, "ReLU" + BF16)}')
        parts.append(f"FReLU bf16 trains {results['FReLU' + BF16]['train'] / results['FReLU']['train']:.2f}x "
                     f"as fast as FReLU fp32")
    return f'{arch}: ' + '; '.join(parts)


if __name__ == '__main__':
    main()
