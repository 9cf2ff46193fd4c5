"""CIFAR data as uint8 tensors, and batches augmented on the training device.

The loaders (PIL, torchvision) load on first use, so that importing ``timm_frelu`` for its models
reads only the constants here.
"""
from importlib import import_module

from ...pretrained.datasets import (CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, CIFAR_MEAN_STD,
                                    CIFAR_NUM_CLASSES)
from .errors import DataError

_LAZY = {'TensorLoader': '.loader', 'ImageSet': '.sources', 'load_split': '.sources'}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
