from .act_factory import ACT_NAME, register_frelu_activation
from .block_act import ACT_TITLES, BLOCK_ACTIVATIONS, create_block_act
from .dyrelu import DyReLU, DyReLUA, DyReLUB
from .frelu import FReLU, LazyFReLU, create_frelu, frelu_reference
from .fuse import FusedFReLU, fuse
from .kernel_layout_conv import KernelLayoutConv2d
