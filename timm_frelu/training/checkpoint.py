"""Reading weights files, safely and with errors that name the fix.

Training checkpoints (timm's ``.pth.tar``: ``state_dict``, ``state_dict_ema``, ``epoch``, the
run's args) are read with ``torch.load(weights_only=True)``, never unpickling code; ``.safetensors``
files hold the weights alone. A damaged file, or one that does not fit the model, raises a
:class:`CheckpointError` that says what to do.
"""
import argparse
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from safetensors.torch import load_file
from timm.models import clean_state_dict

from ..errors import TimmFreluError


class CheckpointError(TimmFreluError, RuntimeError):
    """A weights file that cannot be read, or does not fit the model it is loaded into."""


def read_checkpoint(path: Path) -> Dict[str, Any]:
    """The contents of a training checkpoint, or a ``.safetensors`` file as ``{'state_dict': ...}``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'No checkpoint at {path}: give the path of a .pth.tar training checkpoint or a .safetensors file.')
    try:
        if path.suffix == '.safetensors':
            return {'state_dict': load_file(path)}
        # timm's training checkpoints hold the run's argparse.Namespace beside the tensors.
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # safetensors, pickle and zip errors alike mean a damaged or foreign file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f'{path} cannot be read ({type(err).__name__}: {reason}): the file is truncated, damaged or not a '
            f'checkpoint. Copy it again, or use the run\'s other checkpoint (model_best.pth.tar, checkpoint-*.pth.tar).') from None
    if not isinstance(checkpoint, dict) or not ('state_dict' in checkpoint or all(torch.is_tensor(v) for v in checkpoint.values())):
        raise CheckpointError(f'{path} holds no state_dict; is it a timm training checkpoint or a weights file?')
    return checkpoint if 'state_dict' in checkpoint else {'state_dict': checkpoint}


def checkpoint_weights(checkpoint: Dict[str, Any], use_ema: Optional[bool], path: Path) -> Dict[str, torch.Tensor]:
    """The model weights of a checkpoint: its EMA weights with ``use_ema``, its model weights
    without, and with ``use_ema=None`` the EMA weights where the run kept them (timm's default)."""
    if use_ema is None:
        use_ema = checkpoint.get('state_dict_ema') is not None
    if use_ema:
        if checkpoint.get('state_dict_ema') is None:
            raise CheckpointError(f'{path} has no EMA weights (its run kept none); leave out --use-ema.')
        return clean_state_dict(checkpoint['state_dict_ema'])
    return clean_state_dict(checkpoint['state_dict'])


def load_weights(model: torch.nn.Module, path: Path, use_ema: Optional[bool] = False) -> Dict[str, Any]:
    """Load a checkpoint's weights into ``model`` (every key must fit); returns the checkpoint."""
    checkpoint = read_checkpoint(path)
    state = checkpoint_weights(checkpoint, use_ema, Path(path))
    classifier = state.get('fc.weight')
    num_classes = getattr(model, 'num_classes', None)
    if classifier is not None and num_classes is not None and classifier.shape[0] != num_classes:
        raise CheckpointError(
            f'{path} has a {classifier.shape[0]}-class classifier, but the model was built with {num_classes} '
            f'classes: pass --num-classes {classifier.shape[0]}.')
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise CheckpointError(
            f'{path} does not fit this model ({lines[1] if len(lines) > 1 else lines[0]}). Load it into the model '
            f'it was trained as: the same --model, and the same --model-kwargs (act_layout, ...).') from None
    return checkpoint
