"""Dynamic ReLU (DY-ReLU), Chen et al., ECCV 2020 (arXiv:2003.10027): a baseline for FReLU.

``y_c = max_k (a_c^k x_c + b_c^k)``, a maximum of K linear pieces whose coefficients come from
a hyper-function of the input's global context: global average pooling, FC, ReLU, FC, then
``2 * sigmoid(.) - 1``, a residual in [-1, 1] around fixed initial values:
``a^k = alpha^k + lambda_a * residual``, ``b^k = beta^k + lambda_b * residual``.
As in the paper: K = 2, reduction ratio R = 4, lambda_a = 1.0, lambda_b = 0.5,
alpha = (1, 0), beta = (0, 0), so a zero residual gives exactly ReLU.

* DY-ReLU-A shares the coefficients across space and channels (2K outputs).
* DY-ReLU-B shares them across space only (2KC outputs).

Cost: two FC layers per activation (C*C/R + C/R*2K(C) weights), which the model table shows.
"""
import torch
import torch.nn as nn
from timm.layers import register_notrace_module

__all__ = ['DyReLU', 'DyReLUA', 'DyReLUB']


@register_notrace_module  # timm's FX feature extraction keeps it whole, as its own layers
class DyReLU(nn.Module):
    """Dynamic ReLU.

    Args:
        channels: Number of input channels.
        channel_wise: One set of coefficients per channel (variant B) or one for all (variant A).
        num_pieces: K, the number of linear pieces.
        reduction: R, the hidden width of the hyper-function is ``channels // R``.
        lambda_a, lambda_b: Ranges of the slope and intercept residuals.
        inplace: Accepted for timm's ``act_layer(inplace=True)`` calls and ignored.
    """

    def __init__(
            self,
            channels: int,
            channel_wise: bool = True,
            num_pieces: int = 2,
            reduction: int = 4,
            lambda_a: float = 1.0,
            lambda_b: float = 0.5,
            inplace: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.num_pieces = num_pieces
        self.lambda_a = lambda_a
        self.lambda_b = lambda_b
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, 2 * num_pieces * (channels if channel_wise else 1))
        initial_slopes = torch.zeros(num_pieces)
        initial_slopes[0] = 1.0
        self.register_buffer('initial_slopes', initial_slopes, persistent=False)
        self.register_buffer('initial_intercepts', torch.zeros(num_pieces), persistent=False)

    def coefficients(self, x: torch.Tensor):
        """Slopes and intercepts, each (N, C or 1, K)."""
        context = x.mean(dim=(2, 3))
        residual = 2 * torch.sigmoid(self.fc2(self.act(self.fc1(context)))) - 1
        residual = residual.view(x.shape[0], -1, 2 * self.num_pieces)
        slopes = self.initial_slopes + self.lambda_a * residual[..., :self.num_pieces]
        intercepts = self.initial_intercepts + self.lambda_b * residual[..., self.num_pieces:]
        return slopes, intercepts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and (x.dim() != 4 or x.shape[1] != self.channels):  # not for FX proxies
            raise ValueError(f'DyReLU built for {self.channels} channels expects (N, {self.channels}, H, W), got {list(x.shape)}.')
        slopes, intercepts = self.coefficients(x)
        slopes, intercepts = slopes[:, :, None, None, :], intercepts[:, :, None, None, :]
        # One elementwise max per piece, not an amax over a stacked (N, C, H, W, K) tensor: the
        # stack is K activation-sized copies, and on CPU a size-K reduction over a channels_last
        # input is much slower than the same work as elementwise ops. torch.where rather than
        # torch.maximum because maximum's backward splits ties, which costs several more passes.
        out = x * slopes[..., 0] + intercepts[..., 0]
        for k in range(1, self.num_pieces):
            piece = x * slopes[..., k] + intercepts[..., k]
            out = torch.where(piece > out, piece, out)
        return out


class DyReLUA(DyReLU):
    """DY-ReLU-A: coefficients shared across space and channels."""

    def __init__(self, channels: int, inplace: bool = False, **kwargs) -> None:
        super().__init__(channels, channel_wise=False, **kwargs)


class DyReLUB(DyReLU):
    """DY-ReLU-B: one set of coefficients per channel, shared across space."""

    def __init__(self, channels: int, inplace: bool = False, **kwargs) -> None:
        super().__init__(channels, channel_wise=True, **kwargs)
