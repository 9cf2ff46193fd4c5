from .act_factory import ACT_NAME, register_frelu_activation
from .frelu import FReLU, LazyFReLU, create_frelu, frelu_reference
