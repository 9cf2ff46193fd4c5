from .resnet import ACT_LAYOUTS, ACTS, ARCHS, STEMS, ActResNet, CifarResNet, FReLUStage, set_block_activations
