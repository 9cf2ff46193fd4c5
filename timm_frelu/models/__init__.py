from .resnet_frelu import CifarResNet, FReLUBasicBlock, FReLUBottleneck, FRELU_LAYOUTS, STEMS, stage_blocks
