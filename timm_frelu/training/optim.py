"""Which parameters get weight decay: a choice the recipe study searches.

timm's optimizer factory already leaves 1-D parameters (norm weights and biases, all biases)
undecayed; FReLU adds a second kind of parameter a recipe may want to treat like them, its
depthwise funnel kernel, which only ever feeds a BatchNorm and so, like a norm-layer scale, sets
a layer's effective learning rate more than its function.
"""
from typing import Any, Dict, List

import torch.nn as nn
from timm.optim import param_groups_weight_decay

from ..layers import FReLU

WEIGHT_DECAY_EXCLUDES = ('none', 'norm_bias', 'norm_bias_funnel')


def weight_decay_param_groups(model: nn.Module, weight_decay: float, exclude: str = 'norm_bias') -> List[Dict[str, Any]]:
    """Optimizer parameter groups with and without weight decay.

    Args:
        model: The model whose trainable parameters to group.
        weight_decay: Decay of the decayed group.
        exclude: What gets no decay: ``'none'`` (everything decays), ``'norm_bias'`` (1-D
            parameters: norm layers and biases, timm's default) or ``'norm_bias_funnel'`` (those
            and every FReLU's depthwise kernel).
    """
    if exclude not in WEIGHT_DECAY_EXCLUDES:
        raise ValueError(f'Unknown weight decay exclusion {exclude!r}; choose one of {WEIGHT_DECAY_EXCLUDES}.')
    funnel_kernels = []
    if exclude == 'norm_bias_funnel':
        funnel_kernels = [f'{name}.weight' for name, module in model.named_modules() if isinstance(module, FReLU)]
    return param_groups_weight_decay(
        model, weight_decay, weight_decay_exclude_1d=exclude != 'none', no_weight_decay_list=funnel_kernels)
