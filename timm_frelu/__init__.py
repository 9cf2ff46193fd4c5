"""FReLU (Funnel activation) models for timm.

Importing this package registers the ``*_frelu`` models with timm's model registry and
``'frelu'`` with timm's activation factory.
"""
from .layers import FReLU, LazyFReLU, create_frelu, register_frelu_activation
from .models import CifarResNet, FReLUBasicBlock, FReLUBottleneck

register_frelu_activation()

__version__ = '0.1.0'
