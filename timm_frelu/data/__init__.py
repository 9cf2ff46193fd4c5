from .constants import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, CIFAR_MEAN_STD, CIFAR_NUM_CLASSES
from .errors import DataError
from .loader import TensorLoader
from .sources import ImageSet, load_split
