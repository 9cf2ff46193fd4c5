"""ResNets with FReLU and the activations it is compared with, built on timm's ResNet.

Every architecture is registered once per activation, ``<arch>_<act>``:

* archs ``resnet{18,34,50,101,152}``: timm's ResNet layouts. With the default
  ``stem='cifar'`` the stem is a single 3x3 stride-1 conv with no max-pool, so a 32x32 image
  keeps its resolution through the first stage; ``stem='imagenet'`` gives timm's 7x7 stride-2
  stem and max-pool, for 224 px input.
* archs ``resnet{20,32,44,56,110}``: the CIFAR ResNets of He et al. (2016): a 16-channel 3x3
  stem and three stages of 16/32/64 channels with (depth - 2) / 6 BasicBlocks each. Shortcuts
  that change shape use a 1x1 conv + BN projection (the paper's option B), as timm does.
* acts ``frelu`` (Funnel), and the baselines ``relu``, ``swish``, ``mish`` (timm's), ``dyrelua``
  and ``dyrelub`` (Dynamic ReLU A and B). The networks differ in nothing but these modules.

Which activations get the model's activation is set by ``act_layout``, a plain string so that
it survives timm's JSON config export:

* ``'paper'`` (default): every activation inside the residual blocks of stages 1-3 (after each
  conv but the last, and after the residual add); stage 4 and the stem keep ReLU, as in the
  official FReLU ResNet-50. The official code has no BasicBlock variant; we apply the same stage
  rule to it. The three-stage CIFAR ResNets thus get it in every block.
* ``'all'``: every block activation of every stage; the stem keeps ReLU.

Pretrained tags ``cifar10`` and ``cifar100`` describe the CIFAR-stem models at 32x32 input.
A name without a tag resolves to its first tag, as everywhere in timm: its longest-trained
published weights, else ``cifar10`` (untrained).
"""
from typing import Any, Dict, List, Optional, Tuple, Type, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerType, create_classifier, get_act_layer, get_norm_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from timm.models.resnet import BasicBlock, Bottleneck, ResNet, make_blocks

from ..layers import ACT_TITLES, BLOCK_ACTIVATIONS, KernelLayoutConv2d
from ..pretrained import (PretrainedWeightsError, PublishedWeights, WeightsNotFound, published_weights, resolve_weights,
                          shipped_weights, tag_dataset)
from ..pretrained.datasets import CIFAR10_CLASSES, CIFAR_MEAN_STD, CIFAR_NUM_CLASSES
from .blocks import ACT_LAYOUTS, block_classes

__all__ = ['CifarResNet', 'ACT_LAYOUTS', 'STEMS']

STEMS = ('cifar', 'imagenet')


class CifarResNet(ResNet):
    """timm's ResNet with a CIFAR stem (one 3x3 stride-1 conv, no max-pool).

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
        act_layer: Activation of the stem (and of timm's own blocks).
        kernel_layout_input: Move an fp32 CPU input to channels_last in the stem conv, so that a
            network with FReLU runs in its CPU kernels' layout throughout.
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
            kernel_layout_input: bool = False,
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

        stem_conv = KernelLayoutConv2d if kernel_layout_input else nn.Conv2d
        self.conv1 = stem_conv(in_chans, stem_width, kernel_size=3, stride=1, padding=1, bias=False, **dd)
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

    # timm's ResNet counts five feature levels; a model with fewer stages has fewer. Both methods
    # take timm's index conventions (last n, negative, explicit) over this model's own levels.
    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The stem's and every stage's output (or those ``indices`` selects), as timm's ResNet."""
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        return super().forward_intermediates(x, take_indices, norm, stop_early, output_fmt, intermediates_only)

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last of ``indices`` (and the head), as timm's ResNet."""
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        return super().prune_intermediate_layers(take_indices, prune_norm, prune_head)


# Used with stem='imagenet': the CIFAR tags' data config would not describe that model.
_IMAGENET_STEM_CFG = dict(
    num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, interpolation='bicubic',
    mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, hf_hub_id=None, file=None,
)


def _create_resnet(variant: str, pretrained: bool = False, stem: str = 'cifar', block_act: str = 'frelu',
                   act_layout: str = 'paper', **kwargs) -> ResNet:
    """Build ``variant`` with ``block_act`` in the blocks ``act_layout`` selects: a
    :class:`CifarResNet`, or with ``stem='imagenet'`` timm's own ``ResNet``."""
    if stem not in STEMS:
        raise ValueError(f'Unknown stem {stem!r} for {variant}; choose one of {STEMS}.')
    channels = kwargs.get('channels', (64, 128, 256, 512))
    kwargs['block'] = block_classes(kwargs['block'], len(channels), block_act, act_layout)
    if stem == 'cifar':
        model_cls = CifarResNet
        kwargs.setdefault('kernel_layout_input', block_act == 'frelu')
    else:
        if 'stem_width' in kwargs:
            raise ValueError(f'{variant} is a CIFAR ResNet; it is defined with the CIFAR stem only.')
        if pretrained:
            raise ValueError(
                f'No ImageNet-stem weights exist for {variant}; the cifar10/cifar100 weights are for '
                f"stem='cifar'. Use pretrained=False with stem='imagenet'.")
        model_cls = ResNet
        kwargs['pretrained_cfg_overlay'] = dict(_IMAGENET_STEM_CFG, **(kwargs.get('pretrained_cfg_overlay') or {}))
    if pretrained:
        # Resolve and verify the weights here, so that timm loads one checked local file.
        cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
        name = f'{variant}.{cfg.tag}' if cfg.tag else variant
        if not cfg.has_weights:
            # Name what the user typed: timm passes a tag, when there was one, as pretrained_cfg.
            typed = f"{variant}.{kwargs['pretrained_cfg']}" if isinstance(kwargs.get('pretrained_cfg'), str) else variant
            published = ', '.join(w.name_tag for w in published_weights()) or 'none yet'
            raise PretrainedWeightsError(
                f'No pretrained weights exist for {typed}. Published weights: {published} '
                f"(`timm-frelu weights` lists them with their accuracy). Build it untrained with pretrained=False, "
                f"or load weights of your own with pretrained_cfg_overlay=dict(file='model.safetensors').")
        try:
            weights = resolve_weights(cfg)
        except WeightsNotFound as err:
            raise PretrainedWeightsError(
                f'The pretrained weights of {name} could not be loaded: {err}. Use pretrained=False, train weights '
                f"with the training script, or load a file with pretrained_cfg_overlay=dict(file='model.safetensors').") from None
        kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=str(weights), source='')
    # The stem and every stage are feature levels; timm's default assumes four stages.
    feature_cfg = dict(out_indices=tuple(range(len(channels) + 1)))
    return build_model_with_cfg(model_cls, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


def _cifar_resnet(depth: int) -> Dict[str, Any]:
    blocks_per_stage = (depth - 2) // 6
    return dict(block=BasicBlock, layers=(blocks_per_stage,) * 3, channels=(16, 32, 64), stem_width=16)


# One row per architecture; every (arch, act) pair is a registered model.
ARCHS: Dict[str, Dict[str, Any]] = {
    'resnet18': dict(block=BasicBlock, layers=(2, 2, 2, 2)),
    'resnet34': dict(block=BasicBlock, layers=(3, 4, 6, 3)),
    'resnet50': dict(block=Bottleneck, layers=(3, 4, 6, 3)),
    'resnet101': dict(block=Bottleneck, layers=(3, 4, 23, 3)),
    'resnet152': dict(block=Bottleneck, layers=(3, 8, 36, 3)),
    'resnet20': _cifar_resnet(20),
    'resnet32': _cifar_resnet(32),
    'resnet44': _cifar_resnet(44),
    'resnet56': _cifar_resnet(56),
    'resnet110': _cifar_resnet(110),
}
ACTS = tuple(BLOCK_ACTIVATIONS)
# Every model has an untrained config for each dataset; published weights add their own tags.
DATA_TAGS = ('cifar10', 'cifar100')


def _cfg(name: str, tag: str, num_stages: int, weights: Optional[PublishedWeights] = None) -> Dict[str, Any]:
    dataset = tag_dataset(tag)
    mean, std = CIFAR_MEAN_STD[dataset]
    final_size = 32 // 2 ** (num_stages - 1)  # the CIFAR stem does not downsample; each later stage halves
    cfg = dict(
        num_classes=CIFAR_NUM_CLASSES[dataset],
        input_size=(3, 32, 32),
        pool_size=(final_size, final_size),
        crop_pct=1.0,
        interpolation='bilinear',
        mean=mean,
        std=std,
        first_conv='conv1',
        classifier='fc',
        label_names=CIFAR10_CLASSES if dataset == 'cifar10' else None,
        license='apache-2.0',
        paper_name='Funnel Activation for Visual Recognition',
        paper_ids='arXiv:2007.11824',
    )
    if weights is not None:
        shipped = shipped_weights(name, tag)
        cfg.update(hf_hub_id=weights.hf_hub_id, file=str(shipped) if shipped else None, **weights.pretrained_cfg_fields())
    return cfg


def _model_cfgs(name: str, num_stages: int) -> Dict[str, Dict[str, Any]]:
    """A model's tags: its published weights (longest-trained first, so the default), then the
    untrained dataset configs it has no weights for."""
    cfgs = {f'{name}.{w.tag}': _cfg(name, w.tag, num_stages, w) for w in published_weights(name)}
    for tag in DATA_TAGS:
        cfgs.setdefault(f'{name}.{tag}', _cfg(name, tag, num_stages))
    return cfgs


default_cfgs = generate_default_cfgs({
    name_tag: cfg
    for arch, args in ARCHS.items()
    for act in ACTS
    for name_tag, cfg in _model_cfgs(f'{arch}_{act}', len(args.get('channels', (64, 128, 256, 512)))).items()
})


def _register(arch: str, act: str) -> None:
    name = f'{arch}_{act}'

    def entrypoint(pretrained: bool = False, **kwargs) -> ResNet:
        model_args = dict(ARCHS[arch], block_act=act)
        return _create_resnet(name, pretrained, **dict(model_args, **kwargs))

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f'{arch} with {ACT_TITLES[act]} in its residual blocks (act_layout selects which).'
    globals()[name] = register_model(entrypoint)


# timm's register_model reads each function's name and this module's default_cfgs; writing the
# 60 entrypoints out would repeat one line of arguments 60 times.
for _arch in ARCHS:
    for _act in ACTS:
        _register(_arch, _act)
