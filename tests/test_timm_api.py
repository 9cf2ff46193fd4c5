"""Every registered model behaves as timm users expect of a timm model."""
import numpy as np
import pytest
import timm
import torch

NAMES = timm.list_models('*_frelu')
FOUR_STAGE = {'resnet18_frelu', 'resnet34_frelu', 'resnet50_frelu', 'resnet101_frelu', 'resnet152_frelu'}


def _input(batch=2):
    return torch.randn(batch, 3, 32, 32)


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


def test_forward_features_and_head(name):
    model = timm.create_model(name).eval()
    x = _input()
    features = model.forward_features(x)
    pool = model.pretrained_cfg['pool_size']
    assert features.shape == (2, model.num_features, *pool)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    assert torch.allclose(model.forward_head(features), model(x), atol=1e-5)


def test_reset_and_get_classifier(name):
    model = timm.create_model(name).eval()
    assert model.get_classifier() is model.fc
    model.reset_classifier(7)
    assert model(_input()).shape == (2, 7)
    model.reset_classifier(0)
    assert model(_input()).shape == (2, model.num_features)


def test_features_only_reductions(name):
    model = timm.create_model(name, features_only=True).eval()
    expected_reductions = [1, 1, 2, 4, 8] if name in FOUR_STAGE else [1, 1, 2, 4]
    assert model.feature_info.reduction() == expected_reductions
    features = model(_input())
    assert [f.shape[1] for f in features] == model.feature_info.channels()
    assert [f.shape[-1] for f in features] == [32 // r for r in expected_reductions]


def test_grad_checkpointing_gives_the_same_gradients(name):
    x = _input()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = timm.create_model(name, zero_init_last=False)
        model.set_grad_checkpointing(checkpointing)
        model(x).sum().backward()
        grads.append(model.layer1[0].act1.weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_channels_last(name):
    model = timm.create_model(name).eval()
    x = _input()
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    assert torch.allclose(model(x.to(memory_format=torch.channels_last)), expected, atol=1e-4)


def test_autocast_bfloat16(name):
    model = timm.create_model(name).eval()
    x = _input()
    expected = model(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), expected, atol=0.1 * expected.abs().max().item() + 0.05)


def test_torch_jit_script(name):
    model = timm.create_model(name).eval()
    x = _input()
    assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-5)


def test_onnx_export_runs_in_onnxruntime(name, tmp_path):
    ort = pytest.importorskip('onnxruntime')
    model = timm.create_model(name).eval()
    x = _input()
    path = tmp_path / f'{name}.onnx'
    torch.onnx.export(model, (x,), path, dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.abs(out - model(x).detach().numpy()).max() < 1e-4


@pytest.mark.parametrize('compiled_name', ['resnet20_frelu'])  # inductor's CPU warm-up takes ~30 s a model
def test_torch_compile(compiled_name):
    model = timm.create_model(compiled_name).eval()
    x = _input()
    with torch.no_grad():
        assert torch.allclose(torch.compile(model)(x), model(x), atol=1e-4)
