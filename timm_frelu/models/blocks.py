"""timm's ResNet blocks with the zoo's activations built in.

timm's ``BasicBlock`` and ``Bottleneck`` create every activation as ``act_layer(inplace=True)``,
with no channel count, which FReLU and DY-ReLU need. The blocks here are their subclasses: after
timm's constructor they create the block's activations by name, each sized from the BN before
it. ``ResNet`` takes one block class per stage, so a model gets its activation layout by the
classes it passes (``block_classes``); nothing is patched into a built model.

The FReLU blocks also own the lean training forward: each BN -> FReLU step (and the residual
add before the last FReLU) runs as one autograd node that keeps the conv output and the block
input for backward, which the ReLU block keeps anyway, instead of the BN output and the sum (see
``FReLU.forward_after_norm``). Blocks built with a drop-block, anti-aliasing, attention or
stochastic depth take the plain forward, as does every block in eval mode, without gradients,
under TorchScript and under FX tracing.
"""
from typing import Dict, Tuple, Type

import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock, Bottleneck

from ..layers import BLOCK_ACTIVATIONS, create_block_act

__all__ = ['ActBasicBlock', 'ActBottleneck', 'FReLUBasicBlock', 'FReLUBottleneck', 'block_class', 'block_classes']


class ActBasicBlock(BasicBlock):
    """timm's ``BasicBlock`` whose two activations are ``block_act`` (a class attribute that each
    activation's subclass sets; see :func:`block_class`)."""
    block_act = 'relu'

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.act1 = create_block_act(self.block_act, self.bn1.num_features)
        self.act2 = create_block_act(self.block_act, self.bn2.num_features)


class ActBottleneck(Bottleneck):
    """timm's ``Bottleneck`` whose three activations are ``block_act``."""
    block_act = 'relu'

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.act1 = create_block_act(self.block_act, self.bn1.num_features)
        self.act2 = create_block_act(self.block_act, self.bn2.num_features)
        self.act3 = create_block_act(self.block_act, self.bn3.num_features)


def _plain_layout(kwargs: Dict) -> bool:
    """Whether a block is conv -> BN -> activation throughout, as the lean forward assumes."""
    return all(kwargs.get(key) is None for key in ('attn_layer', 'aa_layer', 'drop_block', 'drop_path'))


class FReLUBasicBlock(ActBasicBlock):
    """``BasicBlock`` with FReLU, and the lean training forward."""
    block_act = 'frelu'

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lean = _plain_layout(kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lean and self.training and not torch.jit.is_scripting() and _lean_applies(x):
            return self._lean_forward(x)
        # timm's BasicBlock.forward (TorchScript cannot call it through super()).
        shortcut = x
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act2(x + shortcut)

    @torch.jit.unused
    def _lean_forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1.forward_after_norm(self.conv1(x), self.bn1)
        return self.act2.forward_after_norm(self.conv2(x), self.bn2, shortcut)


class FReLUBottleneck(ActBottleneck):
    """``Bottleneck`` with FReLU, and the lean training forward."""
    block_act = 'frelu'

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lean = _plain_layout(kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lean and self.training and not torch.jit.is_scripting() and _lean_applies(x):
            return self._lean_forward(x)
        # timm's Bottleneck.forward (TorchScript cannot call it through super()).
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act3(x + shortcut)

    @torch.jit.unused
    def _lean_forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1.forward_after_norm(self.conv1(x), self.bn1)
        x = self.act2.forward_after_norm(self.conv2(x), self.bn2)
        return self.act3.forward_after_norm(self.conv3(x), self.bn3, shortcut)


def _lean_applies(x) -> bool:
    # FX traces with proxies, not tensors: it must see the plain modules.
    return isinstance(x, torch.Tensor) and torch.is_grad_enabled()


class SwishBasicBlock(ActBasicBlock):
    block_act = 'swish'


class MishBasicBlock(ActBasicBlock):
    block_act = 'mish'


class DyReLUABasicBlock(ActBasicBlock):
    block_act = 'dyrelua'


class DyReLUBBasicBlock(ActBasicBlock):
    block_act = 'dyrelub'


class SwishBottleneck(ActBottleneck):
    block_act = 'swish'


class MishBottleneck(ActBottleneck):
    block_act = 'mish'


class DyReLUABottleneck(ActBottleneck):
    block_act = 'dyrelua'


class DyReLUBBottleneck(ActBottleneck):
    block_act = 'dyrelub'


# ReLU keeps timm's own blocks.
_BLOCKS: Dict[Type[nn.Module], Dict[str, Type[nn.Module]]] = {
    BasicBlock: dict(relu=BasicBlock, frelu=FReLUBasicBlock, swish=SwishBasicBlock, mish=MishBasicBlock,
                     dyrelua=DyReLUABasicBlock, dyrelub=DyReLUBBasicBlock),
    Bottleneck: dict(relu=Bottleneck, frelu=FReLUBottleneck, swish=SwishBottleneck, mish=MishBottleneck,
                     dyrelua=DyReLUABottleneck, dyrelub=DyReLUBBottleneck),
}


def block_class(block: Type[nn.Module], act: str) -> Type[nn.Module]:
    """The subclass of timm's ``BasicBlock`` or ``Bottleneck`` whose activations are ``act``."""
    if act not in BLOCK_ACTIVATIONS:
        raise ValueError(f'Unknown block activation {act!r}; choose one of {tuple(BLOCK_ACTIVATIONS)}.')
    return _BLOCKS[block][act]


ACT_LAYOUTS = ('paper', 'all')
PAPER_STAGES = 3


def block_classes(block: Type[nn.Module], num_stages: int, act: str, act_layout: str) -> Tuple[Type[nn.Module], ...]:
    """One block class per stage: ``act`` in the stages ``act_layout`` selects, ReLU in the rest.
    ``'paper'``: stages 1-3, as the official FReLU ResNet-50; ``'all'``: every stage."""
    if act_layout not in ACT_LAYOUTS:
        raise ValueError(f'Unknown act_layout {act_layout!r}; choose one of {ACT_LAYOUTS}.')
    with_act = num_stages if act_layout == 'all' else PAPER_STAGES
    return tuple(block_class(block, act if stage < with_act else 'relu') for stage in range(num_stages))
