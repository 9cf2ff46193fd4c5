"""FReLU's fused CPU kernels for training and inference (fp32, channels_last), compiled on first use.

The source is ``timm_frelu/csrc/frelu_cpu.cpp``; ``torch.utils.cpp_extension`` builds it once per
machine (about half a minute) into its cache and reloads it from there. It is built for the vector
instructions torch itself dispatches to on this CPU (``torch.backends.cpu.get_cpu_capability()``),
whose name is part of the build's name, so a cache shared with an older CPU can't hand it an
unsupported build. Where it can't be built, for want of a C++ compiler say, FReLU warns once and
runs stock torch ops, which give the same results more slowly. ``TIMM_FRELU_CPU_KERNELS=0`` turns
the kernels off.
"""
import functools
import os
import re
import warnings
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

__all__ = ['cpu_kernels', 'cpu_kernels_apply', 'cpu_inference_kernel_applies']

_SOURCE = Path(__file__).resolve().parent.parent / 'csrc' / 'frelu_cpu.cpp'
_ENABLE_VARIABLE = 'TIMM_FRELU_CPU_KERNELS'
_ARCH_FLAGS = {
    'AVX512': ['-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-mavx2', '-mfma'],
    'AVX2': ['-mavx2', '-mfma'],
}


@functools.lru_cache(maxsize=None)
def cpu_kernels() -> Optional[ModuleType]:
    """The compiled kernels, or None when they are turned off or can't be built."""
    if os.environ.get(_ENABLE_VARIABLE, '1') == '0':
        return None
    try:
        from torch.utils.cpp_extension import load
        capability = torch.backends.cpu.get_cpu_capability()
        name = 'timm_frelu_cpu_' + re.sub(r'\W+', '_', capability).lower()
        flags = ['-O3', '-fopenmp', '-Wno-psabi', *_ARCH_FLAGS.get(capability, [])]
        return load(name, [str(_SOURCE)], extra_cflags=flags, extra_ldflags=['-fopenmp'])
    except Exception as error:  # a missing compiler shows up as OSError, RuntimeError or CalledProcessError
        warnings.warn(
            f'FReLU: could not build the fused CPU training kernels ({type(error).__name__}: {error}); training '
            f'uses stock torch ops instead, with the same results but slower. Install a C++ compiler (g++) to '
            f'build them, or set {_ENABLE_VARIABLE}=0 to skip them without this warning.')
        return None


def cpu_kernels_apply(x: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> bool:
    """Whether the kernels take FReLU's input ``x`` (and the residual ``shortcut`` added to it) in
    training: fp32 CPU tensors in channels_last layout with more than one value per channel (BN's
    own requirement), and the kernels built."""
    return (_is_kernel_layout(x) and x.shape[0] * x.shape[2] * x.shape[3] > 1
            and (shortcut is None or (_is_kernel_layout(shortcut) and shortcut.shape == x.shape))
            and cpu_kernels() is not None)


def _is_kernel_layout(x: torch.Tensor) -> bool:
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last))


def cpu_inference_kernel_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the inference kernel, which has no backward, takes ``x`` convolved with ``weight``:
    as in training, and no gradient wanted, and not traced or compiled (for export, say)."""
    return (_is_kernel_layout(x) and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling() and cpu_kernels() is not None)
