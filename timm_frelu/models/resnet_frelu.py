"""ResNets with Funnel activations (FReLU), built on timm's ResNet and its blocks.

Two families share one builder:

* ``resnet{18,34,50,101,152}_frelu``: the ImageNet ResNet layouts. With the default
  ``stem='cifar'`` the stem is a single 3x3 stride-1 conv with no max-pool, so a 32x32 image
  keeps its resolution through the first stage (the usual CIFAR adaptation); ``stem='imagenet'``
  gives timm's 7x7 stride-2 stem and max-pool, for 224 px input.
* ``resnet{20,32,44,56,110}_frelu``: the CIFAR ResNets of He et al. (2016): a 16-channel 3x3
  stem and three stages of 16/32/64 channels with (depth - 2) / 6 BasicBlocks each. Shortcuts
  that change shape use a 1x1 conv + BN projection (the paper's option B), as timm does.

Where FReLU goes is set by ``frelu_layout``, a plain string so that it survives timm's
JSON config export:

* ``'paper'`` (default for every model): every activation of the residual blocks of stages 1-3
  is FReLU (after the first convs and after the residual add), and stage 4 and the stem keep
  ReLU, as in the official ResNet-50. The official code has no BasicBlock variant; we apply the
  same stage rule to it. The three-stage CIFAR ResNets thus have FReLU in every block.
* ``'all'``: every block activation of every stage is FReLU; the stem keeps ReLU.

Pretrained tags ``cifar10`` and ``cifar100`` describe the CIFAR-stem models at 32x32 input.
A name without a tag resolves to its first tag, ``cifar10``, as everywhere in timm.
"""
from typing import Any, Dict, Optional, Tuple, Type, Union

import torch.nn as nn
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerType, create_classifier, get_act_layer, get_norm_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models.resnet import BasicBlock, Bottleneck, ResNet, make_blocks

from ..data.constants import CIFAR_MEAN_STD, CIFAR_NUM_CLASSES
from ..layers import FReLU
from ._weights import checkpoints_dir, hub_repo_id, shipped_weights

__all__ = ['CifarResNet', 'FReLUBasicBlock', 'FReLUBottleneck', 'FRELU_LAYOUTS', 'STEMS', 'stage_blocks']

FRELU_LAYOUTS = ('paper', 'all')
STEMS = ('cifar', 'imagenet')
PAPER_FRELU_STAGES = 3


def _use_frelu(block: nn.Module, num_acts: int) -> None:
    """Replace ``act1..act{num_acts}`` of a timm block with FReLUs sized from the BN before each."""
    for i in range(1, num_acts + 1):
        bn = getattr(block, f'bn{i}')
        setattr(block, f'act{i}', FReLU(bn.num_features, device=bn.weight.device, dtype=bn.weight.dtype))


class FReLUBasicBlock(BasicBlock):
    """timm's BasicBlock with FReLU after conv1 and after the residual add."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _use_frelu(self, num_acts=2)


class FReLUBottleneck(Bottleneck):
    """timm's Bottleneck with FReLU after conv1, after conv2 and after the residual add."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _use_frelu(self, num_acts=3)


_BLOCK_TYPES: Dict[str, Tuple[Type[nn.Module], Type[nn.Module]]] = {
    'basic': (BasicBlock, FReLUBasicBlock),
    'bottleneck': (Bottleneck, FReLUBottleneck),
}


def stage_blocks(block: str, num_stages: int, frelu_layout: str = 'paper') -> Tuple[Type[nn.Module], ...]:
    """The block class of each stage for a block kind ('basic' or 'bottleneck') and a FReLU layout."""
    if frelu_layout not in FRELU_LAYOUTS:
        raise ValueError(f'Unknown frelu_layout {frelu_layout!r}; choose one of {FRELU_LAYOUTS}.')
    plain, funnel = _BLOCK_TYPES[block]
    funnel_stages = PAPER_FRELU_STAGES if frelu_layout == 'paper' else num_stages
    return tuple(funnel if i < funnel_stages else plain for i in range(num_stages))


class CifarResNet(ResNet):
    """timm's ResNet with a CIFAR stem: one 3x3 stride-1 conv and no max-pool.

    It reuses everything of :class:`timm.models.resnet.ResNet` but its constructor, which
    hard-codes the 7x7 stride-2 stem, a 64-channel stem width and four stages. Networks with
    fewer stages get empty ``layer{n}`` stages, the same device timm's own
    ``prune_intermediate_layers`` uses, so the inherited forward methods run unchanged.

    Args:
        block: Block class, or one per stage.
        layers: Number of blocks in each stage.
        channels: Base channel count of each stage (the block's expansion multiplies it).
        num_classes: Number of classifier outputs (0 for none).
        in_chans: Number of input image channels.
        stem_width: Output channels of the stem conv.
        global_pool: Global pooling type, as in timm's ``create_classifier``.
        drop_rate: Dropout rate before the classifier.
        drop_path_rate: Stochastic depth rate, rising linearly over the blocks.
        zero_init_last: Zero-init the last BN of each residual branch.
        act_layer: Activation of the stem and of the plain blocks.
        norm_layer: Normalisation layer.
        block_args: Extra keyword arguments for the blocks.
    """

    def __init__(
            self,
            block: Union[Type[nn.Module], Tuple[Type[nn.Module], ...]],
            layers: Tuple[int, ...],
            channels: Tuple[int, ...] = (64, 128, 256, 512),
            num_classes: int = 10,
            in_chans: int = 3,
            stem_width: int = 64,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            zero_init_last: bool = True,
            act_layer: LayerType = nn.ReLU,
            norm_layer: LayerType = nn.BatchNorm2d,
            block_args: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ) -> None:
        nn.Module.__init__(self)
        dd = {'device': device, 'dtype': dtype}
        if len(channels) > 4:
            raise ValueError(f'A ResNet has at most 4 stages, got channels={channels}.')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)

        self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=3, stride=1, padding=1, bias=False, **dd)
        self.bn1 = norm_layer(stem_width, **dd)
        self.act1 = act_layer(inplace=True)
        self.maxpool = nn.Identity()

        block_fns = block if isinstance(block, tuple) else (block,) * len(channels)
        stage_modules, stage_feature_info = make_blocks(
            block_fns,
            channels,
            layers,
            stem_width,
            act_layer=act_layer,
            norm_layer=norm_layer,
            drop_path_rate=drop_path_rate,
            **(block_args or {}),
            **dd,
        )
        for stage in stage_modules:
            self.add_module(*stage)
        for missing in range(len(stage_modules) + 1, 5):
            self.add_module(f'layer{missing}', nn.Sequential())

        # make_blocks counts strides from the ImageNet stem's 4; this stem does not downsample.
        self.feature_info = [dict(num_chs=stem_width, reduction=1, module='act1')] + [
            dict(info, reduction=info['reduction'] // 4) for info in stage_feature_info]

        self.num_features = channels[-1] * block_fns[-1].expansion
        self.global_pool, self.fc = create_classifier(self.num_features, self.num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.init_weights(zero_init_last=zero_init_last)


# Used with stem='imagenet': the CIFAR tags' data config would not describe that model.
_IMAGENET_STEM_CFG = dict(
    num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, interpolation='bicubic',
    mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, hf_hub_id=None, file=None,
)


def _create_resnet_frelu(
        variant: str,
        pretrained: bool = False,
        *,
        block: str,
        layers: Tuple[int, ...],
        stem: str = 'cifar',
        frelu_layout: str = 'paper',
        **kwargs,
) -> ResNet:
    if stem not in STEMS:
        raise ValueError(f'Unknown stem {stem!r} for {variant}; choose one of {STEMS}.')
    channels = kwargs.get('channels', (64, 128, 256, 512))
    block_fns = stage_blocks(block, len(channels), frelu_layout)
    if stem == 'cifar':
        model_cls = CifarResNet
    else:
        if 'stem_width' in kwargs:
            raise ValueError(f'{variant} is a CIFAR ResNet; it is defined with the CIFAR stem only.')
        if pretrained:
            raise ValueError(
                f'No ImageNet-stem weights exist for {variant}; the cifar10/cifar100 weights are for '
                f"stem='cifar'. Use pretrained=False with stem='imagenet'.")
        model_cls = ResNet
        kwargs['pretrained_cfg_overlay'] = dict(_IMAGENET_STEM_CFG, **(kwargs.get('pretrained_cfg_overlay') or {}))
    # The stem and every stage are feature levels; timm's default assumes four stages.
    feature_cfg = dict(out_indices=tuple(range(len(channels) + 1)))
    try:
        return build_model_with_cfg(
            model_cls, variant, pretrained, block=block_fns, layers=layers, feature_cfg=feature_cfg, **kwargs)
    except (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled) as err:
        cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
        name = f'{variant}.{cfg.tag}'
        reason = str(err).strip().splitlines()[0]
        raise RuntimeError(
            f'No pretrained weights could be loaded for {name}: none are shipped in '
            f'{checkpoints_dir() / name}, and the Hugging Face Hub repo {cfg.hf_hub_id} could not be used '
            f'({type(err).__name__}: {reason}). Use pretrained=False, train weights with the training '
            f"script, or load a file with pretrained_cfg_overlay=dict(file='model.safetensors').") from None


def _cfg(name: str, tag: str, pool_size: Tuple[int, int]) -> Dict[str, Any]:
    mean, std = CIFAR_MEAN_STD[tag]
    return dict(
        hf_hub_id=hub_repo_id(name, tag),
        file=shipped_weights(name, tag),
        num_classes=CIFAR_NUM_CLASSES[tag],
        input_size=(3, 32, 32),
        pool_size=pool_size,
        crop_pct=1.0,
        interpolation='bilinear',
        mean=mean,
        std=std,
        first_conv='conv1',
        classifier='fc',
        license='apache-2.0',
        paper_name='Funnel Activation for Visual Recognition',
        paper_ids='arXiv:2007.11824',
    )


# Final feature map at 32x32 input: 4x4 after the four-stage nets' total stride of 8, 8x8 after
# the three-stage CIFAR ResNets' stride of 4.
_FINAL_POOL = {
    'resnet18_frelu': (4, 4), 'resnet34_frelu': (4, 4), 'resnet50_frelu': (4, 4),
    'resnet101_frelu': (4, 4), 'resnet152_frelu': (4, 4),
    'resnet20_frelu': (8, 8), 'resnet32_frelu': (8, 8), 'resnet44_frelu': (8, 8),
    'resnet56_frelu': (8, 8), 'resnet110_frelu': (8, 8),
}

default_cfgs = generate_default_cfgs({
    f'{name}.{tag}': _cfg(name, tag, pool_size)
    for name, pool_size in _FINAL_POOL.items()
    for tag in ('cifar10', 'cifar100')
})


def _cifar_resnet_args(depth: int) -> Dict[str, Any]:
    blocks_per_stage = (depth - 2) // 6
    return dict(block='basic', layers=(blocks_per_stage,) * 3, channels=(16, 32, 64), stem_width=16)


@register_model
def resnet18_frelu(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-18 with FReLU (paper layout), CIFAR stem by default."""
    model_args = dict(block='basic', layers=(2, 2, 2, 2))
    return _create_resnet_frelu('resnet18_frelu', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet34_frelu(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-34 with FReLU (paper layout), CIFAR stem by default."""
    model_args = dict(block='basic', layers=(3, 4, 6, 3))
    return _create_resnet_frelu('resnet34_frelu', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_frelu(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-50 with FReLU (paper layout), CIFAR stem by default."""
    model_args = dict(block='bottleneck', layers=(3, 4, 6, 3))
    return _create_resnet_frelu('resnet50_frelu', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet101_frelu(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-101 with FReLU (paper layout), CIFAR stem by default."""
    model_args = dict(block='bottleneck', layers=(3, 4, 23, 3))
    return _create_resnet_frelu('resnet101_frelu', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet152_frelu(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-152 with FReLU (paper layout), CIFAR stem by default."""
    model_args = dict(block='bottleneck', layers=(3, 8, 36, 3))
    return _create_resnet_frelu('resnet152_frelu', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet20_frelu(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR ResNet-20 (He et al. 2016) with FReLU in every block."""
    return _create_resnet_frelu('resnet20_frelu', pretrained, **dict(_cifar_resnet_args(20), **kwargs))


@register_model
def resnet32_frelu(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR ResNet-32 (He et al. 2016) with FReLU in every block."""
    return _create_resnet_frelu('resnet32_frelu', pretrained, **dict(_cifar_resnet_args(32), **kwargs))


@register_model
def resnet44_frelu(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR ResNet-44 (He et al. 2016) with FReLU in every block."""
    return _create_resnet_frelu('resnet44_frelu', pretrained, **dict(_cifar_resnet_args(44), **kwargs))


@register_model
def resnet56_frelu(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR ResNet-56 (He et al. 2016) with FReLU in every block."""
    return _create_resnet_frelu('resnet56_frelu', pretrained, **dict(_cifar_resnet_args(56), **kwargs))


@register_model
def resnet110_frelu(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR ResNet-110 (He et al. 2016) with FReLU in every block."""
    return _create_resnet_frelu('resnet110_frelu', pretrained, **dict(_cifar_resnet_args(110), **kwargs))
