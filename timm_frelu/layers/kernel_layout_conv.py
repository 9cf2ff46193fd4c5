"""The first conv of a FReLU network, taking its input to the FReLU CPU kernels' layout.

FReLU's CPU kernels take fp32 or bf16 channels_last activations. A FReLU block moves an NCHW activation to
that layout itself, but only at its first FReLU: the stem and the first conv before it would run
in NCHW, slower here, and the move copies an activation 16-64 channels wide. Moving the 3-channel
input instead costs little and runs the whole network in the kernels' layout, for any caller of
``model(x)``. Elsewhere (a GPU, another dtype, no kernels) it is a plain ``nn.Conv2d``, with the
same parameters and state dict.
"""
import torch
import torch.nn as nn
from timm.layers import register_notrace_module

from .cpu_kernels import to_kernel_layout


@register_notrace_module  # timm's FX feature extraction keeps it whole, as its own layers
class KernelLayoutConv2d(nn.Conv2d):

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Tensors only: FX traces with proxies, and graphs traced for export keep the input's layout.
        if not torch.jit.is_scripting() and isinstance(x, torch.Tensor) and not torch.jit.is_tracing():
            x = self._to_kernel_layout(x)
        # TorchScript cannot call nn.Conv2d.forward through super(); this is its body.
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def _to_kernel_layout(self, x: torch.Tensor) -> torch.Tensor:
        return to_kernel_layout(x)
