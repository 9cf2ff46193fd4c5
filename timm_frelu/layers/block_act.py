"""Activations by name, sized for the channels they act on: the activations the zoo compares."""
from typing import Callable, Dict

import torch.nn as nn
from timm.layers import get_act_layer

from .dyrelu import DyReLUA, DyReLUB
from .frelu import FReLU


def _timm_act(name: str) -> Callable[[int], nn.Module]:
    return lambda channels: get_act_layer(name)(inplace=True)


# name -> factory taking the channel count. Swish and Mish are timm's own (torch's SiLU and Mish).
BLOCK_ACTIVATIONS: Dict[str, Callable[[int], nn.Module]] = {
    'frelu': FReLU,
    'relu': _timm_act('relu'),
    'swish': _timm_act('swish'),
    'mish': _timm_act('mish'),
    'dyrelua': DyReLUA,
    'dyrelub': DyReLUB,
}
# How cards, reports and docstrings name them.
ACT_TITLES: Dict[str, str] = dict(frelu='FReLU (Funnel activation)', relu='ReLU', swish='Swish (SiLU)', mish='Mish',
                                  dyrelua='DY-ReLU-A', dyrelub='DY-ReLU-B')


def create_block_act(name: str, channels: int) -> nn.Module:
    if name not in BLOCK_ACTIVATIONS:
        raise ValueError(f'Unknown block activation {name!r}; choose one of {tuple(BLOCK_ACTIVATIONS)}.')
    return BLOCK_ACTIVATIONS[name](channels)
