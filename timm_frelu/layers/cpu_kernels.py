"""FReLU's fused CPU kernels for training and inference (fp32 or bf16, channels_last), compiled on first use.

The source is ``timm_frelu/layers/csrc/frelu_cpu.cpp``; ``torch.utils.cpp_extension`` builds it once per
machine (about half a minute) into its cache and reloads it from there. It is built for the vector
instructions torch itself dispatches to on this CPU (``torch.backends.cpu.get_cpu_capability()``),
whose name is part of the build's name, so a cache shared with an older CPU can't hand it an
unsupported build. Where it can't be built, for want of a C++ compiler say, FReLU warns once and
runs stock torch ops, which give the same results more slowly. ``TIMM_FRELU_CPU_KERNELS=0`` turns
the kernels off.
"""
import contextlib
import functools
import hashlib
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Iterator, Optional

import torch

__all__ = ['KERNEL_DTYPES', 'cpu_kernels', 'cpu_kernels_apply', 'cpu_inference_kernel_applies', 'kernels_take_dtype',
           'to_kernel_layout']

_SOURCE = Path(__file__).resolve().parent / 'csrc' / 'frelu_cpu.cpp'
_ENABLE_VARIABLE = 'TIMM_FRELU_CPU_KERNELS'
# bf16 activations are computed in fp32 and stored in bf16; the parameters stay fp32.
KERNEL_DTYPES = (torch.float32, torch.bfloat16)
_ARCH_FLAGS = {
    'AVX512': ['-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-mavx2', '-mfma'],
    'AVX2': ['-mavx2', '-mfma'],
}


@functools.lru_cache(maxsize=None)
def cpu_kernels() -> Optional[ModuleType]:
    """The compiled kernels, or None when they are turned off or can't be built. The first call on
    a machine builds them and says so on stderr; later calls load the build from the cache."""
    if os.environ.get(_ENABLE_VARIABLE, '1') == '0':
        return None
    missing = _missing_build_tools()
    if missing:
        _warn_fallback(f'{missing} is not installed')
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    name = 'timm_frelu_cpu_' + re.sub(r'\W+', '_', capability).lower()
    build_dir = _build_dir(name)
    built = (build_dir / f'{name}.so').is_file()
    if not built:
        sys.stderr.write(f'timm_frelu: building the fused FReLU CPU kernels for {capability} into {build_dir} '
                         f'(once per machine, about half a minute)\n')
    try:
        load = _quiet_cpp_extension().load
        flags = ['-O3', '-fopenmp', '-Wno-psabi', *_ARCH_FLAGS.get(capability, [])]
        kernels = load(name, [str(_SOURCE)], extra_cflags=flags, extra_ldflags=['-fopenmp'], build_directory=str(build_dir))
    except Exception as error:  # a failed compile shows up as OSError, RuntimeError or CalledProcessError
        _warn_fallback(f'the build failed ({type(error).__name__}: {error})')
        return None
    if not built:
        sys.stderr.write('timm_frelu: FReLU CPU kernels built\n')
    return kernels


def _build_dir(name: str) -> Path:
    """A build folder per kernel source and CPU capability, where torch keeps its extension builds
    (``$TORCH_EXTENSIONS_DIR``, else torch's default, which is per Python and CUDA version)."""
    root = os.environ.get('TORCH_EXTENSIONS_DIR') or _quiet_cpp_extension().get_default_build_root()
    source = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:12]
    folder = Path(root) / f'{name}-{source}'
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def no_cuda_runtime_warning() -> Iterator[None]:
    """Silence the warning ``torch.utils.cpp_extension`` logs when it is first imported on a
    machine with CUDA's files but no CUDA runtime: it says nothing about CPU work. Import it (or
    ``torch.utils.benchmark``, which imports it) inside this."""
    logger = logging.getLogger('torch.utils.cpp_extension')
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _quiet_cpp_extension() -> ModuleType:
    with no_cuda_runtime_warning():
        import torch.utils.cpp_extension as cpp_extension
    return cpp_extension


def _missing_build_tools() -> Optional[str]:
    """What the build needs and this machine lacks: a C++ compiler, or ninja (a dependency of
    this package, which torch's extension builder runs)."""
    compiler = os.environ.get('CXX', 'c++')
    if shutil.which(compiler) is None:
        return f'a C++ compiler ({compiler}; install g++, or point $CXX at one)'
    if not _quiet_cpp_extension().is_ninja_available():
        return "ninja (pip install ninja)"
    return None


def _warn_fallback(reason: str) -> None:
    warnings.warn(
        f'FReLU: the fused CPU kernels are not available: {reason}. FReLU runs stock torch ops instead, with '
        f'the same results but slower. Set {_ENABLE_VARIABLE}=0 to skip the kernels without this warning.')


def cpu_kernels_apply(x: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> bool:
    """Whether the kernels take FReLU's input ``x`` (and the residual ``shortcut`` added to it) in
    training: fp32 or bf16 CPU tensors in channels_last layout with more than one value per channel
    (BN's own requirement), and the kernels built."""
    return (_is_kernel_layout(x) and x.shape[0] * x.shape[2] * x.shape[3] > 1
            and (shortcut is None or (_is_kernel_layout(shortcut) and shortcut.shape == x.shape
                                      and shortcut.dtype == x.dtype))
            and cpu_kernels() is not None)


def to_kernel_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels_last layout when it is a CPU activation the kernels could take in
    that layout, else ``x`` as it is. FReLU's output keeps the layout and the convs after it
    follow it, so in a network of FReLU blocks only the first block copies: a model called on a
    plain NCHW batch takes the kernels too."""
    if (kernels_take_dtype(x) and not x.is_contiguous(memory_format=torch.channels_last)
            and cpu_kernels() is not None):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def kernels_take_dtype(x: torch.Tensor) -> bool:
    """Whether ``x`` is a 4-D CPU activation of a type the kernels take, in any layout."""
    return x.device.type == 'cpu' and x.dtype in KERNEL_DTYPES and x.dim() == 4


def _is_kernel_layout(x: torch.Tensor) -> bool:
    return kernels_take_dtype(x) and x.is_contiguous(memory_format=torch.channels_last)


def cpu_inference_kernel_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the inference kernel, which has no backward, takes ``x`` convolved with ``weight``:
    as in training, and no gradient wanted, and not traced or compiled (for export, say)."""
    return (_is_kernel_layout(x) and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling() and cpu_kernels() is not None)
