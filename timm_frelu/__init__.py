"""FReLU (Funnel activation) models for timm.

Importing this package registers the ``<arch>_frelu`` models and their baselines
(``<arch>_{relu,swish,mish,dyrelua,dyrelub}``) with timm's model registry, and ``'frelu'`` with
timm's activation factory.
"""
from .layers import DyReLUA, DyReLUB, FReLU, FusedFReLU, LazyFReLU, create_frelu, fuse, register_frelu_activation
from .models import CifarResNet

register_frelu_activation()

__version__ = '0.1.0'
