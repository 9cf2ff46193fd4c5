"""Model weights rounded to a few bits, for snapshots small enough to commit.

Each output channel of a weight of more than one dimension is split into groups of ``group``
values (a shorter channel, such as a depthwise 3x3 kernel's 9, is one group); each group is stored
as integer codes in ``-q..q`` (``q = 2 ** (bits - 1) - 1``) times one bf16 scale, the group's
largest magnitude over ``q``. At 4 bits two codes share a byte. Biases, norm weights,
running statistics and counters are kept as they are: they are few, and a BN's statistics are not
worth rounding.

A group of 64 rather than a whole output channel: one large weight no longer coarsens the grid of
a 2,048-input row (ResNet-50's 1x1 convolutions), for 2 bytes of scale per 64 weights. Groups do not
cross channels: FReLU's depthwise kernels differ in scale from one channel to the next.
"""
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from safetensors import safe_open

from ..errors import TimmFreluError
from ..fileio import save_safetensors_atomic

FORMAT = 'timm-frelu rounded weights'
_SCALE = '.rounded_scale'
_SHAPE = '.rounded_shape'


class RoundedWeightsError(TimmFreluError, ValueError):
    pass


def _is_rounded(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and tensor.dim() > 1


def _group_size(channel_size: int, group: int) -> int:
    return min(group, channel_size)


def round_weights(state: Dict[str, torch.Tensor], bits: int = 4, group: int = 64) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """``state`` as the tensors and metadata of a safetensors file (see the module docstring).

    Args:
        state: A model's state dict.
        bits: Bits a code, 4 or 8.
        group: Weights sharing one scale, within an output channel.
    """
    if bits not in (4, 8):
        raise RoundedWeightsError(f'bits must be 4 or 8 (whole codes per byte), not {bits}.')
    levels = 2 ** (bits - 1) - 1
    tensors = {}
    for name, tensor in state.items():
        if not _is_rounded(tensor):
            tensors[name] = tensor.detach().clone()
            continue
        rows = tensor.detach().float().flatten(1)
        size = _group_size(rows.shape[1], group)
        groups = F.pad(rows, (0, -rows.shape[1] % size)).view(-1, size)
        # Codes are taken against the stored (bf16) scale, so that decoding meets exactly the grid they were rounded to.
        scale = (groups.abs().amax(dim=1) / levels).clamp_min(torch.finfo(torch.bfloat16).tiny).bfloat16()
        codes = torch.round(groups / scale.float()[:, None]).clamp(-levels, levels).to(torch.int8).flatten()
        if bits == 4:
            nibbles = F.pad(codes + 8, (0, codes.numel() % 2)).to(torch.uint8).view(-1, 2)
            codes = nibbles[:, 0] | (nibbles[:, 1] << 4)
        tensors[name] = codes
        tensors[name + _SCALE] = scale
        tensors[name + _SHAPE] = torch.tensor(tensor.shape, dtype=torch.int64)
    return tensors, {'format': FORMAT, 'bits': str(bits), 'group': str(group)}


def unround_weights(tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> Dict[str, torch.Tensor]:
    """The fp32 state dict that :func:`round_weights` stored."""
    if metadata.get('format') != FORMAT:
        raise RoundedWeightsError(
            f"not a file of rounded weights (format {metadata.get('format')!r}, expected {FORMAT!r}): it was written by "
            'another tool or an older timm-frelu; snapshot the run again with this version.')
    bits, group = int(metadata['bits']), int(metadata['group'])
    state = {}
    for name, tensor in tensors.items():
        if name.endswith((_SCALE, _SHAPE)):
            continue
        if name + _SCALE not in tensors:
            state[name] = tensor
            continue
        codes, scale = tensor, tensors[name + _SCALE].float()
        if bits == 4:
            codes = torch.stack([codes & 15, codes >> 4], dim=1).flatten().to(torch.int8) - 8
        shape = torch.Size(tensors[name + _SHAPE].tolist())
        size = _group_size(shape[1:].numel(), group)
        values = codes[:scale.numel() * size].float().view(-1, size) * scale[:, None]
        state[name] = values.view(shape[0], -1)[:, :shape[1:].numel()].contiguous().view(shape)
    return state


def save_rounded_weights(state: Dict[str, torch.Tensor], path: Path, metadata: Optional[Dict[str, str]] = None,
                         bits: int = 4, group: int = 64) -> None:
    """Write ``state`` rounded (:func:`round_weights`) to the safetensors file ``path``, whole or not
    at all, with ``metadata`` beside the format's own."""
    tensors, format_metadata = round_weights(state, bits=bits, group=group)
    save_safetensors_atomic(tensors, path, {**(metadata or {}), **format_metadata})


def load_rounded_weights(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The fp32 state dict and the metadata of a file :func:`save_rounded_weights` wrote."""
    with safe_open(str(path), framework='pt') as f:
        tensors, metadata = {name: f.get_tensor(name) for name in f.keys()}, f.metadata()
    return unround_weights(tensors, metadata), metadata
