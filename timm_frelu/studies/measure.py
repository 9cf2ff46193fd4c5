"""Speed and activation memory of a model, measured one way wherever the project reports them
(the report's speed columns, ``benchmarks/``, the GPU zoo job's calibration, the tests).

Timing goes through ``torch.utils.benchmark``, which synchronises CUDA around each measurement
and runs at this process's thread count (its default is one thread).
"""
import os
import statistics
from contextlib import nullcontext
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional

import torch
import torch.nn.functional as F

Step = Callable[[], None]


# torch's own kernels and oneDNN's (convolutions) each read one of these.
_CAPABILITY_CAPS = ('ATEN_CPU_CAPABILITY', 'ONEDNN_MAX_CPU_ISA')


def machine_description() -> str:
    """The machine a measurement came from: CPU model, vector capability torch dispatches to,
    threads, torch version (and the GPU, where one is used)."""
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    gpu = f', GPU {torch.cuda.get_device_name(0)}' if torch.cuda.is_available() else ''
    capability = torch.backends.cpu.get_cpu_capability()
    # A capability capped by the environment emulates an older CPU on this one; say so, since
    # the timings then come from this CPU's cores and caches, not the older CPU's.
    capped = [f'{name}={os.environ[name]}' for name in _CAPABILITY_CAPS if os.environ.get(name)]
    if capped:
        capability += f" (capped by {' '.join(capped)})"
    return f'{cpu}, CPU capability {capability}, {torch.get_num_threads()} threads, torch {torch.__version__}{gpu}'


def _batch(model: torch.nn.Module, batch_size: int, channels_last: bool, device) -> torch.Tensor:
    input_size = model.pretrained_cfg.get('input_size', (3, 32, 32)) if hasattr(model, 'pretrained_cfg') else (3, 32, 32)
    x = torch.randn(batch_size, *input_size, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def training_step(model: torch.nn.Module, batch_size: int, channels_last: bool = False, compile: bool = False,
                  autocast_dtype: Optional[torch.dtype] = None) -> Step:
    """One SGD training step (forward, cross-entropy, backward, update) of ``model`` on a random
    batch, on the model's device."""
    device = next(model.parameters()).device
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = _batch(model, batch_size, channels_last, device)
    y = torch.randint(0, max(model.num_classes, 1), (batch_size,), device=device)
    autocast = _autocast(device, autocast_dtype)

    def step() -> None:
        model.train()
        with autocast():
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def inference_step(model: torch.nn.Module, batch_size: int, channels_last: bool = False, compile: bool = False,
                   autocast_dtype: Optional[torch.dtype] = None) -> Step:
    """One eval-mode forward pass of ``model`` under ``torch.no_grad`` on a random batch."""
    device = next(model.parameters()).device
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile else model
    x = _batch(model, batch_size, channels_last, device)
    autocast = _autocast(device, autocast_dtype)

    def step() -> None:
        model.eval()
        with torch.no_grad(), autocast():
            forward(x)
    return step


def _autocast(device: torch.device, dtype: Optional[torch.dtype]) -> Callable[[], Any]:
    return (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext


def _timer(step: Step):
    from ..layers.cpu_kernels import no_cuda_runtime_warning
    with no_cuda_runtime_warning():
        from torch.utils.benchmark import Timer
    return Timer('step()', globals={'step': step}, num_threads=torch.get_num_threads())


def _seconds(step: Step) -> float:
    return _timer(step).timeit(1).mean


def interleaved_medians(steps: Dict[Hashable, Step], repeats: int) -> Dict[Hashable, float]:
    """Median seconds of one call of each step, the steps timed in turn within every repeat after
    one warm-up call each (allocator, kernels, compilation): on a machine whose speed drifts, the
    drift then lands on every step alike instead of on whichever was measured last."""
    for step in steps.values():
        step()
    times: Dict[Hashable, List[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(_seconds(step))
    return {name: statistics.median(t) for name, t in times.items()}


def seconds_per_call(step: Step, min_seconds: float) -> float:
    """Median seconds of one call of ``step``, measured in blocks for at least ``min_seconds``
    (after a warm-up call that is not counted)."""
    step()
    return _timer(step).blocked_autorange(min_run_time=min_seconds).median


def saved_activation_bytes(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                           parameters: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward, each storage once; the
    input's and the ``parameters``' storage (a module's own, when ``forward`` is one) not counted."""
    sizes: Dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        sizes[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward(x)
    owned = {x.untyped_storage().data_ptr()} | {p.untyped_storage().data_ptr() for p in parameters}
    if isinstance(forward, torch.nn.Module):
        owned |= {p.untyped_storage().data_ptr() for p in forward.parameters()}
    return sum(size for ptr, size in sizes.items() if ptr not in owned)
