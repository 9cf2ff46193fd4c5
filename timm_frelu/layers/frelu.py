"""Funnel activation (FReLU), Ma, Zhang and Sun, ECCV 2020.

``y = max(x, T(x))`` with ``T(x) = BN(depthwise_conv_kxk(x))``: a ReLU whose threshold is a
learned spatial condition instead of zero. Not to be confused with "Flexible ReLU"
(arXiv 1706.08098), an unrelated activation with the same abbreviation.

Design choices, both invisible to the formula:

* **No conv bias by default.** The official code keeps the conv's default bias, but the
  BatchNorm right after it subtracts the batch mean, which cancels any bias exactly. Dropping
  it saves ``channels`` parameters; ``bias=True`` restores the official parameter count.
* **The depthwise kernel is a plain parameter, not an ``nn.Conv2d``.** timm's ResNet
  ``init_weights`` re-initialises every ``nn.Conv2d`` with Kaiming fan-out, which for a
  depthwise kernel is ``channels`` times too small (it counts fan-out as if the conv were
  dense). A conv followed by BN is scale-invariant in its output, but the weight's scale still
  sets its effective learning rate, so we keep our own Kaiming fan-in init out of reach of
  model-wide conv inits.
"""
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from .cpu_kernels import (cpu_inference_kernel_applies, cpu_kernels, cpu_kernels_apply, kernels_take_dtype,
                          to_kernel_layout)

__all__ = ['FReLU', 'LazyFReLU', 'create_frelu', 'fold_batch_norm', 'frelu_reference']


@register_notrace_module  # timm's FX feature extraction keeps it whole, as its own layers
class FReLU(nn.Module):
    """Funnel activation: ``max(x, BN(depthwise_conv(x)))``.

    Args:
        channels: Number of input (and output) channels.
        kernel_size: Size of the square depthwise kernel (odd; the paper uses 3).
        bias: Give the depthwise conv a bias (redundant before BN; see the module docstring).
        inplace: Accepted for compatibility with timm's ``act_layer(inplace=True)`` calls and
            ignored: both branches of the max need the unmodified input.
        efficient: In training, use the memory-lean custom autograd function (the same outputs and
            gradients as the reference ops, which run otherwise).
        device, dtype: Where and in which dtype to create the parameters, as for torch layers.
    """

    def __init__(
            self,
            channels: int,
            kernel_size: int = 3,
            bias: bool = False,
            inplace: bool = False,
            efficient: bool = True,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if kernel_size % 2 != 1:
            raise ValueError(f'FReLU kernel_size must be odd to keep the spatial size, got {kernel_size}.')
        self.kernel_size = kernel_size
        self.efficient = efficient
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, kernel_size, **dd))
        self.bias = nn.Parameter(torch.empty(channels, **dd)) if bias else None
        self.bn = nn.BatchNorm2d(channels, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.weight, mode='fan_in', nonlinearity='linear')
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self.bn.reset_parameters()

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(
                f'FReLU expects a 4-D (N, C, H, W) input, got shape {list(x.shape)}. '
                f'Reshape the input or use FReLU only after 2-D conv layers.')
        if x.shape[1] != self.weight.shape[0]:
            raise ValueError(
                f'FReLU was built for {self.weight.shape[0]} channels but got an input with '
                f'{x.shape[1]}. Build it with FReLU({x.shape[1]}), or use LazyFReLU() to infer the count.')

    def funnel_condition(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial condition ``T(x) = BN(depthwise_conv(x))``."""
        if isinstance(x, torch.Tensor):  # FX traces with proxies, which have no shape to check
            self._check_input(x)
        padding = self.kernel_size // 2
        return self.bn(F.conv2d(x, self.weight, self.bias, padding=padding, groups=self.weight.shape[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fast paths are for tensors; FX tracing (proxies) and TorchScript see the formula.
        if self.efficient and not torch.jit.is_scripting() and isinstance(x, torch.Tensor):
            if self._can_use_efficient_training(x):
                return self._efficient_training_forward(x)
            if self._can_fold_bn():
                return self._folded_forward(x)
        return torch.maximum(x, self.funnel_condition(x))

    @torch.jit.unused
    def _can_fold_bn(self) -> bool:
        return not self.training and type(self.bn) is nn.BatchNorm2d and self.bn.track_running_stats

    @torch.jit.unused
    def _folded_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eval mode with BN folded into the kernel: the condition in one pass over the activation,
        not two (or, in the CPU kernel, the whole activation in one)."""
        self._check_input(x)
        weight, bias = fold_batch_norm(self.weight, self.bias, self.bn)
        return folded_funnel_max(to_kernel_layout(x), weight, bias)

    @torch.jit.unused
    def _can_use_efficient_training(self, x: torch.Tensor) -> bool:
        """The custom autograd path covers plain fp32/fp16/bf16 training with a stock BatchNorm2d,
        and autocast where the CPU kernels take the activations; anything else (eval, autocast
        elsewhere, SyncBatchNorm, tracing for export) takes the reference ops."""
        return (self.training and torch.is_grad_enabled() and _is_stock_batch_norm(self.bn)
                and _autocast_leaves_it_to_the_kernels(x) and not torch.compiler.is_compiling()
                and not torch.jit.is_tracing() and x.dim() == 4)

    @torch.jit.unused
    def _efficient_training_forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if torch.is_autocast_enabled(x.device.type):
            x = to_kernel_layout(x)  # under autocast only the kernels may run this function
        return _FReLUTrainFunction.apply(x, None, None, None, *self._funnel_args())

    @torch.jit.unused
    def forward_after_norm(
            self, x: torch.Tensor, norm: nn.Module, shortcut: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``self(norm(x) + shortcut)``, ``shortcut`` optional: a residual block's BN -> FReLU step.

        In training with a stock BatchNorm2d, one autograd node that keeps ``x`` (and
        ``shortcut``) for backward instead of the BN output or the sum, which it recomputes:
        ``x`` is the conv output and ``shortcut`` the block input, which the layers around
        keep anyway. Otherwise the plain modules, one after the other.
        """
        if self.efficient and self._can_use_efficient_training(x) and _is_stock_batch_norm(norm):
            self._check_input(x)
            # In a block the copy to the kernels' layout replaces the conv output (only the first
            # block's: the layout carries on from there); a lone FReLU would keep both.
            x = to_kernel_layout(x)
            if shortcut is not None:
                # Under autocast a block's input can be fp32 (the stem's, say) where its conv
                # output is bf16: the kernels add them in one type.
                shortcut = to_kernel_layout(shortcut.to(x.dtype))
            return _FReLUTrainFunction.apply(x, shortcut, norm.weight, norm.bias, *self._funnel_args(norm))
        x = norm(x)
        if shortcut is not None:
            x = x + shortcut
        return self(x)

    def _funnel_args(self, norm: Optional[nn.BatchNorm2d] = None) -> Tuple[Any, ...]:
        """The train function's arguments after ``norm``'s weight and bias: the funnel's
        parameters, then what the BNs need besides (``norm``'s state None without it)."""
        norm_state = _BatchNormState.of(norm) if norm is not None else None
        return (self.weight, self.bias, self.bn.weight, self.bn.bias, norm_state, _BatchNormState.of(self.bn),
                self.kernel_size // 2)

    def extra_repr(self) -> str:
        return f'{self.weight.shape[0]}, kernel_size={self.kernel_size}, bias={self.bias is not None}'

    @torch.jit.unused
    def fuse(self) -> nn.Module:
        """This FReLU for inference, its BN folded into the depthwise kernel (a :class:`FusedFReLU`):
        what timm's ``reparameterize_model`` (``--reparam`` in its scripts) replaces it with."""
        from .fuse import FusedFReLU  # fuse.py builds on this module
        return FusedFReLU.from_frelu(self)


def fold_batch_norm(weight: torch.Tensor, bias: Optional[torch.Tensor], bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """The kernel and bias of ``bn(conv(x))`` as one conv, from the BN's running statistics:
    differentiable in the conv's and BN's parameters (torch's ``fuse_conv_bn_weights`` returns
    detached parameters)."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bias is not None:
        shift = shift + bias * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return weight * scale.view(-1, 1, 1, 1), shift


def folded_funnel_max(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``max(x, depthwise_conv(x) + bias)``: FReLU in eval mode with its BN folded into the kernel,
    in the CPU inference kernel where it applies (which computes in fp32 whatever ``x``'s type),
    else in ``x``'s dtype."""
    if cpu_inference_kernel_applies(x, weight):
        return cpu_kernels().inference(x, weight.float(), bias.float())
    padding = weight.shape[-1] // 2
    weight, bias = weight.to(x.dtype), bias.to(x.dtype)
    return torch.maximum(x, F.conv2d(x, weight, bias, padding=padding, groups=weight.shape[0]))


def _autocast_leaves_it_to_the_kernels(x: torch.Tensor) -> bool:
    """Whether autocast, if on, lets the custom autograd path run: only where the CPU kernels take
    the activations, as they read bf16 beside fp32 parameters, which the stock-op path would mix."""
    return not torch.is_autocast_enabled(x.device.type) or (kernels_take_dtype(x) and cpu_kernels() is not None)


def _fp32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A parameter as the CPU kernels take it (they compute in fp32 for bf16 models too)."""
    return t.float() if t is not None else None


def _is_stock_batch_norm(norm: nn.Module) -> bool:
    return type(norm) is nn.BatchNorm2d and norm.track_running_stats and norm.affine


@dataclass
class _BatchNormState:
    """What a training-mode BN needs besides its weight and bias, none of it differentiated: the
    running statistics it updates in place, the momentum of this batch and eps."""
    running_mean: torch.Tensor
    running_var: torch.Tensor
    momentum: float
    eps: float

    @classmethod
    def of(cls, bn: nn.BatchNorm2d) -> '_BatchNormState':
        """The state of ``bn`` for one batch, counting the batch as BN's own forward would."""
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        return cls(bn.running_mean, bn.running_var, momentum, bn.eps)


def _apply_batch_norm(x, weight, bias, batch_mean, batch_invstd):
    """A training-mode BN's output from its input and its batch statistics, recomputed."""
    scale = batch_invstd * weight
    shift = bias - batch_mean * scale
    return torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))


class _FReLUTrainFunction(torch.autograd.Function):
    """FReLU in training mode, ``frelu(norm(x) + shortcut)`` with the BN ``norm`` optional and the
    residual ``shortcut`` only with a BN, as it is added in place to the BN's fresh output. For
    backward it keeps only ``x`` (and ``shortcut``), a one-byte mask of where the funnel won, and
    the BN batch statistics; the BN output, the sum and the depthwise conv are recomputed. On CPU,
    for fp32 or bf16 channels_last input, it all runs in the fused kernels of
    :mod:`timm_frelu.layers.cpu_kernels`, which never store the BN output or the sum; elsewhere
    in stock torch ops.

    The reference ops keep the conv output, the BN output and both inputs of the max: two more
    activation-sized tensors per FReLU than this function's quarter-sized mask, three more when it
    also takes over the BN before it.
    """

    @staticmethod
    def forward(ctx, x, shortcut, norm_weight, norm_bias, weight, bias, bn_weight, bn_bias,
                norm_state: Optional[_BatchNormState], bn_state: _BatchNormState, padding: int):
        has_norm = norm_weight is not None
        assert shortcut is None or has_norm, 'the shortcut is added to the BN output: pass the BN with it'
        ctx.fused = cpu_kernels_apply(x, shortcut)
        if ctx.fused:
            out, funnel_wins, batch_mean, batch_invstd, batch_var, norm_mean, norm_invstd, norm_var = \
                cpu_kernels().forward(x, shortcut, _fp32(norm_weight), _fp32(norm_bias),
                                      norm_state.eps if has_norm else 0.0, _fp32(weight), _fp32(bias), _fp32(bn_weight),
                                      _fp32(bn_bias), bn_state.eps)
            _update_running_statistics(bn_state, batch_mean, batch_var, x)
            if has_norm:
                _update_running_statistics(norm_state, norm_mean, norm_var, x)
        else:
            out, funnel_wins, batch_mean, batch_invstd, norm_mean, norm_invstd = _funnel_forward(
                x, shortcut, norm_weight, norm_bias, norm_state, weight, bias, bn_weight, bn_bias, bn_state, padding)
        ctx.save_for_backward(x, shortcut, norm_weight, norm_bias, norm_mean, norm_invstd,
                              weight, bias, bn_weight, batch_mean, batch_invstd, funnel_wins)
        ctx.norm_eps, ctx.eps, ctx.padding = norm_state.eps if has_norm else 0.0, bn_state.eps, padding
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (x, shortcut, norm_weight, norm_bias, norm_mean, norm_invstd,
         weight, bias, bn_weight, batch_mean, batch_invstd, funnel_wins) = ctx.saved_tensors
        has_norm = norm_weight is not None
        if ctx.fused:
            # The kernels' gradients are fp32; autograd casts them to a bf16 model's parameters.
            (grad_act_input, grad_weight, grad_bias, grad_bn_weight, grad_bn_bias,
             grad_x, grad_norm_weight, grad_norm_bias) = cpu_kernels().backward(
                grad_out.to(x.dtype), x, shortcut, _fp32(norm_weight), _fp32(norm_bias), norm_mean, norm_invstd,
                funnel_wins, _fp32(weight), _fp32(bias), _fp32(bn_weight), batch_mean, batch_invstd)
            if not has_norm:
                grad_x = grad_act_input
        else:
            needs_input_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or has_norm
            grad_act_input, grad_weight, grad_bias, grad_bn_weight, grad_bn_bias = _funnel_backward(
                grad_out, x, shortcut, norm_weight, norm_bias, norm_mean, norm_invstd, funnel_wins,
                weight, bias, bn_weight, batch_mean, batch_invstd, ctx.padding, ctx.eps,
                needs_input_grad, ctx.needs_input_grad[4])
            grad_x, grad_norm_weight, grad_norm_bias = grad_act_input, None, None
            if has_norm:
                grad_x, grad_norm_weight, grad_norm_bias = torch.ops.aten.native_batch_norm_backward(
                    grad_act_input, x, norm_weight, None, None, norm_mean, norm_invstd, True, ctx.norm_eps,
                    [ctx.needs_input_grad[0], True, True])
        grad_shortcut = grad_act_input if shortcut is not None and ctx.needs_input_grad[1] else None
        return (grad_x, grad_shortcut, grad_norm_weight, grad_norm_bias,
                grad_weight, grad_bias, grad_bn_weight, grad_bn_bias, None, None, None)


def _funnel_forward(x, shortcut, norm_weight, norm_bias, norm_state: Optional[_BatchNormState],
                    weight, bias, bn_weight, bn_bias, bn_state: _BatchNormState, padding: int):
    """``frelu(norm(x) + shortcut)`` in training with stock ops: the output, the mask of where the
    funnel won, and the batch mean and invstd of the funnel's BN and of ``norm`` (None without it)."""
    act_input, norm_mean, norm_invstd = x, None, None
    if norm_weight is not None:
        act_input, norm_mean, norm_invstd = torch.native_batch_norm(
            x, norm_weight, norm_bias, norm_state.running_mean, norm_state.running_var, True, norm_state.momentum,
            norm_state.eps)
        if shortcut is not None:
            act_input.add_(shortcut)
    conv = F.conv2d(act_input, weight, bias, padding=padding, groups=weight.shape[0])
    condition, batch_mean, batch_invstd = torch.native_batch_norm(
        conv, bn_weight, bn_bias, bn_state.running_mean, bn_state.running_var, True, bn_state.momentum, bn_state.eps)
    # uint8, not bool: on CPU, multiplying by a bool tensor takes a slower path than by uint8.
    funnel_wins = (condition > act_input).view(torch.uint8)
    return torch.maximum(condition, act_input), funnel_wins, batch_mean, batch_invstd, norm_mean, norm_invstd


def _update_running_statistics(state: _BatchNormState, batch_mean, batch_var, x):
    """A training-mode BN's update of its running statistics, with the unbiased batch variance."""
    count = x.numel() // x.shape[1]
    dtype = state.running_mean.dtype
    state.running_mean.lerp_(batch_mean.to(dtype), state.momentum)
    state.running_var.lerp_((batch_var * (count / (count - 1))).to(dtype), state.momentum)


def _funnel_backward(grad_out, x, shortcut, norm_weight, norm_bias, norm_mean, norm_invstd, funnel_wins,
                     weight, bias, bn_weight, batch_mean, batch_invstd, padding, eps, needs_input_grad, needs_weight_grad):
    """Gradients of ``max(a, BN(depthwise_conv(a)))``, ``a = norm(x) + shortcut`` (or ``x``), with
    stock ops, ``a`` recomputed: those of ``a`` (only the direct path's unless ``needs_input_grad``;
    ``norm``'s backward is the caller's), the conv's weight and bias, and the BN's weight and bias."""
    act_input = x
    if norm_weight is not None:
        act_input = _apply_batch_norm(x, norm_weight, norm_bias, norm_mean, norm_invstd)
        if shortcut is not None:
            act_input.add_(shortcut)
    channels = weight.shape[0]
    grad_condition = grad_out * funnel_wins
    grad_act_input = grad_out - grad_condition
    conv = F.conv2d(act_input, weight, bias, padding=padding, groups=channels)
    grad_conv, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
        grad_condition, conv, bn_weight, None, None, batch_mean, batch_invstd, True, eps, [True, True, True])
    grad_conv_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad_conv, act_input, weight, [channels] if bias is not None else None, [1, 1], [padding] * 2,
        [1, 1], False, [0, 0], channels, [needs_input_grad, needs_weight_grad, bias is not None])
    if grad_conv_input is not None:
        grad_act_input = grad_conv_input.add_(grad_act_input)
    return grad_act_input, grad_weight, grad_bias, grad_bn_weight, grad_bn_bias


class LazyFReLU(LazyModuleMixin, FReLU):
    """FReLU whose channel count is taken from the first input it sees.

    timm's models build activations as ``act_layer(inplace=True)`` with no channel count, so
    this is what ``act_layer='frelu'`` creates there. Like torch's ``nn.LazyConv2d``, it turns
    into a plain :class:`FReLU` at its first forward, or when a state dict is loaded into it;
    run one forward pass before creating the optimizer, scripting or exporting.
    """

    cls_to_become = FReLU
    weight: UninitializedParameter

    def __init__(self, kernel_size: int = 3, bias: bool = False, inplace: bool = False) -> None:
        super().__init__(0, kernel_size=kernel_size, bias=bias)
        self.weight = UninitializedParameter()
        if bias:
            self.bias = UninitializedParameter()
        self.bn = nn.LazyBatchNorm2d()

    def reset_parameters(self) -> None:
        # FReLU.__init__ calls this before the real parameters exist.
        if not self.has_uninitialized_params() and self.weight.numel() > 0:
            super().reset_parameters()

    def extra_repr(self) -> str:
        if self.has_uninitialized_params():
            return f'channels=<inferred at first forward>, kernel_size={self.kernel_size}, bias={self.bias is not None}'
        return super().extra_repr()

    def initialize_parameters(self, x: torch.Tensor) -> None:
        if not self.has_uninitialized_params():
            return
        if x.dim() != 4:
            raise ValueError(f'FReLU expects a 4-D (N, C, H, W) input, got shape {list(x.shape)}.')
        channels = x.shape[1]
        with torch.no_grad():
            self.weight.materialize((channels, 1, self.kernel_size, self.kernel_size), device=x.device, dtype=x.dtype)
            if self.bias is not None:
                self.bias.materialize((channels,), device=x.device, dtype=x.dtype)
            nn.init.kaiming_normal_(self.weight, mode='fan_in', nonlinearity='linear')
            if self.bias is not None:
                nn.init.zeros_(self.bias)


def create_frelu(channels: Optional[int] = None, kernel_size: int = 3, bias: bool = False, inplace: bool = False) -> FReLU:
    """The ``'frelu'`` entry of timm's activation factory: an :class:`FReLU` when the channel
    count is known, a :class:`LazyFReLU` when it is not."""
    if channels is None:
        return LazyFReLU(kernel_size=kernel_size, bias=bias)
    return FReLU(channels, kernel_size=kernel_size, bias=bias)


def frelu_reference(x: torch.Tensor, module: FReLU) -> torch.Tensor:
    """The published formula written out with torch's stock modules, for testing FReLU
    implementations against: ``max(x, BN(DepthwiseConv(x)))``."""
    channels = module.weight.shape[0]
    conv = nn.Conv2d(channels, channels, module.kernel_size, padding=module.kernel_size // 2,
                     groups=channels, bias=module.bias is not None).to(x)
    bn = nn.BatchNorm2d(channels).to(x)
    conv.load_state_dict({'weight': module.weight, **({'bias': module.bias} if module.bias is not None else {})})
    bn.load_state_dict(module.bn.state_dict())
    bn.train(module.training)
    return torch.max(x, bn(conv(x)))
