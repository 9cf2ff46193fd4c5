"""The baseline activations and the claim that baseline models differ from FReLU ones in the
activation modules alone."""
import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import get_act_layer
from timm.models.resnet import BasicBlock, Bottleneck

from timm_frelu import DyReLUA, DyReLUB, FReLU
from timm_frelu.layers import DyReLU
from timm_frelu.models import ACTS, ARCHS
from timm_frelu.pretrained import published_weights

BASELINES = ('relu', 'swish', 'mish', 'dyrelua', 'dyrelub')
ACTIVATION_TYPES = (FReLU, DyReLU, nn.ReLU, nn.SiLU, nn.Mish)


def test_every_arch_has_the_whole_comparison_family():
    assert ACTS == ('frelu',) + BASELINES
    assert timm.list_models('resnet18_*') == sorted(f'resnet18_{act}' for act in ACTS)
    for arch in ARCHS:
        assert {f'{arch}_{act}' for act in ACTS} <= set(timm.list_models(f'{arch}_*'))  # timm has resnet50_gn etc.
        for act in ACTS:
            # timm sorts by name; published_weights puts the default (longest-trained) first.
            assert (sorted(timm.list_pretrained(f'{arch}_{act}.*'))
                    == sorted(w.name_tag for w in published_weights(f'{arch}_{act}')))


def _structure(model):
    """(activation positions, everything else) of a model's module tree. A block counts as the timm
    block it subclasses: the subclasses differ only in the activations they create; the FReLU
    models' stem conv counts as the Conv2d it is, computing the same (it only picks the layout)."""
    acts, rest = [], {}
    inside_act = ()
    for name, module in model.named_modules():
        if inside_act and name.startswith(inside_act):
            continue
        if isinstance(module, ACTIVATION_TYPES):
            acts.append(name)
            inside_act = tuple(f'{a}.' for a in acts)
            continue
        module_type = next((base for base in (BasicBlock, Bottleneck, nn.Conv2d) if isinstance(module, base)),
                           type(module))
        rest[name] = (module_type, [tuple(p.shape) for p in module.parameters(recurse=False)])
    return acts, rest


@pytest.mark.parametrize('arch', list(ARCHS))
@pytest.mark.parametrize('act', BASELINES)
def test_baseline_differs_from_frelu_in_activations_only(arch, act):
    with torch.device('meta'):
        frelu_acts, frelu_rest = _structure(timm.create_model(f'{arch}_frelu'))
        acts, rest = _structure(timm.create_model(f'{arch}_{act}'))
    assert acts == frelu_acts
    assert rest == frelu_rest


@pytest.mark.parametrize('act, act_type', [('swish', get_act_layer('swish')), ('mish', get_act_layer('mish')),
                                           ('dyrelua', DyReLUA), ('dyrelub', DyReLUB)])
def test_baselines_use_their_activation_where_frelu_models_use_frelu(act, act_type):
    frelu, model = timm.create_model('resnet50_frelu'), timm.create_model(f'resnet50_{act}')
    frelu_modules = dict(frelu.named_modules())
    for name, module in model.named_modules():
        if isinstance(frelu_modules.get(name), FReLU):
            assert isinstance(module, act_type), name
    assert isinstance(model.act1, nn.ReLU) and isinstance(model.layer4[0].act3, nn.ReLU)


@pytest.mark.parametrize('arch', ['resnet20', 'resnet18'])
@pytest.mark.parametrize('act', BASELINES)
def test_baselines_train_a_step(arch, act):
    model = timm.create_model(f'{arch}_{act}.cifar100')
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize('variant', [DyReLUA, DyReLUB])
def test_dyrelu_at_its_initial_coefficients_is_relu(variant):
    act = variant(8)
    with torch.no_grad():
        act.fc2.weight.zero_()
        act.fc2.bias.zero_()
    x = torch.randn(3, 8, 5, 5)
    assert torch.equal(act(x), torch.relu(x))


@pytest.mark.parametrize('variant, coefficient_channels', [(DyReLUA, 1), (DyReLUB, 16)])
def test_dyrelu_shapes_and_ranges(variant, coefficient_channels):
    act = variant(16)
    x = torch.randn(4, 16, 6, 6)
    slopes, intercepts = act.coefficients(x)
    assert slopes.shape == intercepts.shape == (4, coefficient_channels, 2)
    # alpha = (1, 0) and beta = (0, 0), plus residuals within lambda_a = 1 and lambda_b = 0.5
    assert ((slopes[..., 0] >= 0) & (slopes[..., 0] <= 2)).all() and (slopes[..., 1].abs() <= 1).all()
    assert (intercepts.abs() <= 0.5).all()
    hidden = 16 // 4
    assert sum(p.numel() for p in act.parameters()) == 16 * hidden + hidden + hidden * 2 * 2 * coefficient_channels + 2 * 2 * coefficient_channels
    y = act(x)
    expected = torch.maximum(x * slopes[:, :, None, None, 0] + intercepts[:, :, None, None, 0],
                             x * slopes[:, :, None, None, 1] + intercepts[:, :, None, None, 1])
    assert torch.allclose(y, expected)


def test_dyrelu_rejects_a_wrong_channel_count():
    with pytest.raises(ValueError, match='built for 16 channels'):
        DyReLUB(16)(torch.randn(1, 8, 4, 4))


@pytest.mark.slow
@pytest.mark.parametrize('act', ['dyrelua', 'dyrelub'])
def test_dyrelu_models_script_and_export(act, tmp_path):
    ort = pytest.importorskip('onnxruntime')
    model = timm.create_model(f'resnet20_{act}').eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-5)
    torch.onnx.export(model, (x,), tmp_path / 'm.onnx', dynamo=True, verbose=False)
    session = ort.InferenceSession(str(tmp_path / 'm.onnx'), providers=['CPUExecutionProvider'])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.abs(out - model(x).detach().numpy()).max() < 1e-4
