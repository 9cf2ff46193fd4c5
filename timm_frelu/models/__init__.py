from .blocks import ACT_LAYOUTS, block_class, block_classes
from .resnet import ACTS, ARCHS, STEMS, CifarResNet
