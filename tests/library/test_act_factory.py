"""The 'frelu' entry in timm's activation factory. These tests are the alarm for a timm upgrade
that moves the private tables the hook writes to (see timm_frelu/layers/act_factory.py)."""
import pytest
import timm
import torch
from timm.layers import create_act, create_act_layer, get_act_layer

from timm_frelu import FReLU, LazyFReLU
from timm_frelu.layers import create_frelu


def test_hook_is_in_timms_default_table():
    assert create_act._ACT_LAYER_DEFAULT.get('frelu') is create_frelu, (
        "timm's activation table lost the 'frelu' entry: a timm upgrade changed "
        'timm.layers.create_act; update timm_frelu/layers/act_factory.py')


def test_get_act_layer_resolves_frelu():
    assert get_act_layer('frelu') is create_frelu
    assert get_act_layer('FReLU') is create_frelu


def test_create_act_layer_with_and_without_channels():
    assert isinstance(create_act_layer('frelu', inplace=True), LazyFReLU)
    sized = create_act_layer('frelu', channels=8)
    assert type(sized) is FReLU and sized.weight.shape[0] == 8


def _frelu_count(model):
    return sum(isinstance(m, FReLU) for m in model.modules())


@pytest.mark.parametrize('model_name', ['resnet18', 'resnet50', 'resnet26d'])
def test_timm_resnet_with_act_layer_frelu_trains_one_step(model_name):
    # zero_init_last would zero every residual branch, and with it the first step's gradient
    # of the FReLUs inside the branches.
    model = timm.create_model(model_name, act_layer='frelu', num_classes=5, zero_init_last=False)
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    model(x)  # materialises the lazy FReLUs before the optimizer sees the parameters
    assert not any(isinstance(m, LazyFReLU) for m in model.modules())
    assert _frelu_count(model) > 0 and not any(isinstance(m, torch.nn.ReLU) for m in model.modules())

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    after = dict(model.named_parameters())
    frelu_weights = [f'{n}.weight' for n, m in model.named_modules() if isinstance(m, FReLU)]
    assert all(not torch.equal(before[n], after[n]) for n in frelu_weights)


def test_timm_resnet_with_act_layer_frelu_exports_and_reloads(tmp_path):
    model = timm.create_model('resnet18', act_layer='frelu', num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    expected = model(x)
    timm.models.save_for_hf(model, tmp_path, model_args=dict(act_layer='frelu', num_classes=4), safe_serialization=True)
    reloaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    assert _frelu_count(reloaded) == _frelu_count(model)
    assert torch.allclose(reloaded(x), expected, atol=1e-6)
