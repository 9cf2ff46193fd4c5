from .resnet import ACT_LAYOUTS, ACTS, ARCHS, STEMS, ActResNet, CifarResNet, set_block_activations
