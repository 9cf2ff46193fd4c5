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

from ..layers import BLOCK_ACTIVATIONS, create_block_act, fuse

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


class _FReLUForward:
    """The FReLU blocks' forward: in training, each conv's BN -> FReLU step (the residual add
    inside the last) as one autograd node; otherwise timm's plain block forward."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lean = _plain_layout(kwargs)

    @torch.jit.unused
    def fuse(self) -> nn.Module:
        """An eval-only copy of this block with every BN folded into its conv, FReLU's included, as
        :func:`timm_frelu.fuse` folds them: what timm's ``reparameterize_model`` (``--reparam`` in
        its scripts) replaces the block with."""
        return fuse(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lean and self.training and not torch.jit.is_scripting() and _lean_applies(x):
            return self._lean_forward(x)
        return self._plain_forward(x)

    @torch.jit.unused
    def _lean_forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        *steps, (conv, bn, act) = self._conv_bn_act()
        for step_conv, step_bn, step_act in steps:
            x = step_act.forward_after_norm(step_conv(x), step_bn)
        return act.forward_after_norm(conv(x), bn, shortcut)

    def _add_shortcut(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """The end of timm's block forwards, before the last activation."""
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        # In place, as timm's blocks add: a new sum would be a fresh allocation the size of the
        # activation each block, ~5x the add's time on CPU.
        x += shortcut
        return x


class FReLUBasicBlock(_FReLUForward, ActBasicBlock):
    """``BasicBlock`` with FReLU, and the lean training forward."""
    block_act = 'frelu'

    def _plain_forward(self, x: torch.Tensor) -> torch.Tensor:
        # timm's BasicBlock.forward (TorchScript cannot call it through super()).
        shortcut = x
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        return self.act2(self._add_shortcut(self.bn2(self.conv2(x)), shortcut))

    @torch.jit.unused
    def _conv_bn_act(self):
        return (self.conv1, self.bn1, self.act1), (self.conv2, self.bn2, self.act2)


class FReLUBottleneck(_FReLUForward, ActBottleneck):
    """``Bottleneck`` with FReLU, and the lean training forward."""
    block_act = 'frelu'

    def _plain_forward(self, x: torch.Tensor) -> torch.Tensor:
        # timm's Bottleneck.forward (TorchScript cannot call it through super()).
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        return self.act3(self._add_shortcut(self.bn3(self.conv3(x)), shortcut))

    @torch.jit.unused
    def _conv_bn_act(self):
        return (self.conv1, self.bn1, self.act1), (self.conv2, self.bn2, self.act2), (self.conv3, self.bn3, self.act3)


def _lean_applies(x) -> bool:
    # FX traces with proxies, not tensors: it must see the plain modules.
    return isinstance(x, torch.Tensor) and torch.is_grad_enabled()


# ReLU keeps timm's own blocks and FReLU has its own; each other activation gets one subclass of
# ActBasicBlock and one of ActBottleneck (SwishBasicBlock, DyReLUABottleneck, ...), which differ only
# in ``block_act`` and are made here from a table, each a module-level name like any class.
_CLASS_NAMES = dict(swish='Swish', mish='Mish', dyrelua='DyReLUA', dyrelub='DyReLUB')
_BLOCKS: Dict[Type[nn.Module], Dict[str, Type[nn.Module]]] = {
    BasicBlock: dict(relu=BasicBlock, frelu=FReLUBasicBlock),
    Bottleneck: dict(relu=Bottleneck, frelu=FReLUBottleneck),
}
for _act, _prefix in _CLASS_NAMES.items():
    for _base, _act_base in ((BasicBlock, ActBasicBlock), (Bottleneck, ActBottleneck)):
        _cls = type(f'{_prefix}{_base.__name__}', (_act_base,), dict(
            block_act=_act, __module__=__name__, __doc__=f"timm's ``{_base.__name__}`` with {_prefix}."))
        globals()[_cls.__name__] = _BLOCKS[_base][_act] = _cls


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
