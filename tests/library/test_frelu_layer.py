import pytest
import torch
import torch.nn as nn

from timm_frelu import FReLU, LazyFReLU
from timm_frelu.layers import frelu_reference


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('bias', [False, True])
def test_matches_published_formula(training, bias):
    frelu = FReLU(6, bias=bias)
    with torch.no_grad():  # non-trivial BN state, so eval mode is tested with real statistics
        frelu.bn.running_mean.uniform_(-1, 1)
        frelu.bn.running_var.uniform_(0.5, 2)
        frelu.bn.weight.uniform_(0.5, 1.5)
        frelu.bn.bias.uniform_(-0.5, 0.5)
        if bias:
            frelu.bias.uniform_(-1, 1)
    frelu.train(training)
    x = torch.randn(4, 6, 9, 7)
    assert (frelu(x) - frelu_reference(x, frelu)).abs().max() < 1e-6


def test_gradients_match_published_formula():
    frelu = FReLU(5)
    x = torch.randn(3, 5, 8, 8, requires_grad=True)
    frelu(x).square().sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in frelu.parameters()]

    x_ref = x.detach().clone().requires_grad_()
    conv = nn.Conv2d(5, 5, 3, padding=1, groups=5, bias=False)
    bn = nn.BatchNorm2d(5)
    conv.weight.data.copy_(frelu.weight.data)
    torch.max(x_ref, bn(conv(x_ref))).square().sum().backward()
    ref_grads = [x_ref.grad, conv.weight.grad, bn.weight.grad, bn.bias.grad]
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, atol=1e-5)


def test_output_is_at_least_input_and_shape_preserved():
    x = torch.randn(2, 4, 5, 5)
    y = FReLU(4)(x)
    assert y.shape == x.shape
    assert (y >= x).all()


@pytest.mark.parametrize('kernel_size', [3, 5])
def test_parameter_count(kernel_size):
    assert sum(p.numel() for p in FReLU(16, kernel_size).parameters()) == 16 * kernel_size ** 2 + 2 * 16
    assert sum(p.numel() for p in FReLU(16, kernel_size, bias=True).parameters()) == 16 * kernel_size ** 2 + 3 * 16


def test_non_4d_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r'4-D \(N, C, H, W\) input, got shape \[4, 8, 8\]'):
        FReLU(4)(torch.randn(4, 8, 8))


def test_channel_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r'built for 4 channels but got an input with 3.*FReLU\(3\)'):
        FReLU(4)(torch.randn(1, 3, 8, 8))


def test_even_kernel_is_rejected():
    with pytest.raises(ValueError, match='odd'):
        FReLU(4, kernel_size=2)


def test_weight_init_is_kaiming_fan_in():
    weight = FReLU(4096).weight
    assert weight.std().item() == pytest.approx((1 / 9) ** 0.5, rel=0.05)


def test_lazy_frelu_infers_channels_at_first_forward():
    frelu = LazyFReLU()
    y = frelu(torch.randn(2, 7, 6, 6))
    assert type(frelu) is FReLU
    assert frelu.weight.shape == (7, 1, 3, 3)
    assert y.shape == (2, 7, 6, 6)
    assert sum(p.numel() for p in frelu.parameters()) == 7 * 9 + 2 * 7


def test_lazy_frelu_loads_a_state_dict_before_any_forward():
    source = FReLU(5).train()
    source(torch.randn(4, 5, 6, 6))  # moves the running statistics away from their init
    lazy = LazyFReLU()
    lazy.load_state_dict(source.state_dict())
    source.eval(), lazy.eval()
    x = torch.randn(2, 5, 6, 6)
    assert torch.allclose(lazy(x), source(x), atol=1e-6)
