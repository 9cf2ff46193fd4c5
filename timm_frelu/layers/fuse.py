"""Inference-time folding of BatchNorm into the conv before it, FReLU's funnel included."""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .frelu import FReLU, fold_batch_norm, folded_funnel_max
from .kernel_layout_conv import KernelLayoutConv2d

__all__ = ['FusedFReLU', 'fuse']


@register_notrace_module
class FusedFReLU(nn.Module):
    """``max(x, depthwise_conv(x) + b)``: an eval-mode FReLU with its BN folded into the kernel."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_frelu(cls, frelu: FReLU) -> 'FusedFReLU':
        weight, bias = fold_batch_norm(frelu.weight, frelu.bias, frelu.bn)
        return cls(weight.detach(), bias.detach(), frelu.kernel_size).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError('A fused FReLU holds its BN statistics folded into the kernel and cannot train; '
                               'train or fine-tune the unfused model and fuse it again.')
        if not torch.jit.is_scripting() and isinstance(x, torch.Tensor):
            return self._eager_forward(x)
        funnel = F.conv2d(x, self.weight, self.bias, padding=self.kernel_size // 2, groups=self.weight.shape[0])
        return torch.maximum(x, funnel)

    @torch.jit.unused
    def _eager_forward(self, x: torch.Tensor) -> torch.Tensor:
        return folded_funnel_max(x, self.weight, self.bias)


# Convs whose forward is the plain convolution, so that folding a BN into their weight and bias
# is exact (a subclass with its own padding, say, may not be).
_FOLDABLE_CONVS = (nn.Conv2d, KernelLayoutConv2d)


def _fold_pairs(module: nn.Module) -> None:
    # timm's ResNets name each conv and its BN conv1/bn1, conv2/bn2, ...; downsample paths are
    # Sequential(conv, bn).
    for i in ('1', '2', '3'):
        conv, bn = getattr(module, f'conv{i}', None), getattr(module, f'bn{i}', None)
        if type(conv) in _FOLDABLE_CONVS and isinstance(bn, nn.BatchNorm2d):
            setattr(module, f'conv{i}', fuse_conv_bn_eval(conv, bn))
            setattr(module, f'bn{i}', nn.Identity())
    if isinstance(module, nn.Sequential):
        for j in range(len(module) - 1):
            if type(module[j]) in _FOLDABLE_CONVS and isinstance(module[j + 1], nn.BatchNorm2d):
                module[j] = fuse_conv_bn_eval(module[j], module[j + 1])
                module[j + 1] = nn.Identity()
    for name, child in module.named_children():
        if isinstance(child, FReLU):
            setattr(module, name, FusedFReLU.from_frelu(child))
    if getattr(module, 'lean', False):
        module.lean = False  # the lean forward hands each BN to its FReLU; a fused block has neither


@torch.no_grad()
def fuse(model: nn.Module) -> nn.Module:
    """An eval-only copy of a timm ResNet-style model with every BN folded into its conv: the
    main path's (conv/bn pairs and Sequential downsamples) and each FReLU's funnel. Its outputs
    match the unfused model in eval mode up to float rounding."""
    fused = copy.deepcopy(model).eval()
    for module in list(fused.modules()):
        _fold_pairs(module)
    return fused
