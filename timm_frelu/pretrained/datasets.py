"""Per-channel statistics of the CIFAR training sets, on pixels scaled to [0, 1]."""
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# Sorted, as torchvision and the image folders order them: the official label indices.
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')

CIFAR_NUM_CLASSES = {'cifar10': 10, 'cifar100': 100}
CIFAR_MEAN_STD = {'cifar10': (CIFAR10_MEAN, CIFAR10_STD), 'cifar100': (CIFAR100_MEAN, CIFAR100_STD)}

# How a dataset's test data is described to a reader (model cards, the manifest, reports).
DATASET_DESCRIPTIONS = {
    'shared/cifar10-jpeg': 'CIFAR-10 test set, JPEG q75 copy (not the official pixels), 10,000 images',
    'shared/cifar10-lossless': 'CIFAR-10 test set, first 1,000 images, original pixels',
    'torch/cifar10': 'CIFAR-10 test set (official, torchvision), 10,000 images',
    'torch/cifar100': 'CIFAR-100 test set (official, torchvision), 10,000 images',
}
