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


def test_grad_checkpointing_gives_the_same_gradients_on_the_lean_path(name, monkeypatch):
    from timm_frelu.models import blocks
    lean_calls = []
    for cls in (blocks.FReLUBasicBlock, blocks.FReLUBottleneck):
        monkeypatch.setattr(cls, '_lean_forward', _counted(cls._lean_forward, lean_calls))
    x = _input()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = timm.create_model(name, zero_init_last=False)
        model.set_grad_checkpointing(checkpointing)
        lean_calls.clear()
        model(x).sum().backward()
        assert lean_calls, 'the FReLU blocks did not take their lean training forward'
        grads.append(model.layer1[0].act1.weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def _counted(method, calls):
    def counted(self, x):
        calls.append(type(self).__name__)
        return method(self, x)
    return counted


def test_channels_last(name):
    model = timm.create_model(name).eval()
    x = _input()
    # The reference runs in NCHW throughout: in float64, which FReLU's CPU kernels (and the stem that
    # moves a batch to their layout) leave to the stock ops, unlike float32.
    layouts = []
    hook = model.layer1.register_forward_hook(
        lambda module, args, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        expected = model.double()(x.double())
        model = model.float().to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    hook.remove()
    assert layouts == [False, True]
    assert torch.allclose(out.double(), expected, atol=1e-4)


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


@pytest.mark.slow
def test_onnx_export_runs_in_onnxruntime(name, tmp_path):
    ort = pytest.importorskip('onnxruntime')
    model = timm.create_model(name).eval()
    x = _input()
    path = tmp_path / f'{name}.onnx'
    torch.onnx.export(model, (x,), path, dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.abs(out - model(x).detach().numpy()).max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize('compiled_name', ['resnet20_frelu'])  # inductor's CPU warm-up takes ~30 s a model
def test_torch_compile(compiled_name):
    model = timm.create_model(compiled_name).eval()
    x = _input()
    with torch.no_grad():
        assert torch.allclose(torch.compile(model)(x), model(x), atol=1e-4)


# FX, intermediates and pruning over every activation: FReLU models and each baseline's CIFAR
# and ImageNet-layout ResNet.
BASELINES = ('relu', 'swish', 'mish', 'dyrelua', 'dyrelub')
EVERY_KIND = sorted(NAMES + [f'{arch}_{act}' for arch in ('resnet20', 'resnet50') for act in BASELINES])


@pytest.mark.parametrize('name', EVERY_KIND)
@pytest.mark.parametrize('training', [False, True])
def test_fx_symbolic_trace_runs_like_the_model(name, training):
    model = timm.create_model(name).train(training)
    traced = torch.fx.symbolic_trace(model)
    x = _input()
    assert torch.allclose(traced(x), model(x), atol=1e-5)
    if training:
        traced(x).sum().backward()
        assert all(p.grad is not None for p in model.parameters())
    else:
        assert torch.allclose(torch.jit.script(traced)(x), model(x), atol=1e-5)


@pytest.mark.parametrize('name', EVERY_KIND)
def test_timm_fx_feature_extractor_matches_the_hooks_one(name):
    torch.manual_seed(0)
    hooks = timm.create_model(name, features_only=True).eval()
    torch.manual_seed(0)  # the same initial weights: the two wrappers name their parameters differently
    fx = timm.create_model(name, features_only=True, feature_cls='fx').eval()
    x = _input()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fx(x), hooks(x), strict=True))


@pytest.mark.parametrize('name', EVERY_KIND)
def test_forward_intermediates_follow_feature_info(name):
    model = timm.create_model(name).eval()
    x = _input()
    final, levels = model.forward_intermediates(x)
    assert [t.shape[1] for t in levels] == [info['num_chs'] for info in model.feature_info]
    assert [t.shape[-1] for t in levels] == [32 // info['reduction'] for info in model.feature_info]
    assert torch.allclose(final, model.forward_features(x), atol=1e-6)
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert len(last_two) == 2 and all(torch.equal(a, b) for a, b in zip(last_two, levels[-2:]))
    picked = model.forward_intermediates(x, indices=[0, -1], norm=True, intermediates_only=True)
    assert torch.equal(picked[0], levels[0]) and torch.equal(picked[1], levels[-1])
    (second,) = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    assert torch.equal(second, levels[1])
    with pytest.raises(AssertionError):
        model.forward_intermediates(x, indices=[len(levels)])


@pytest.mark.parametrize('name', EVERY_KIND)
def test_prune_intermediate_layers_keeps_what_the_indices_need(name):
    model = timm.create_model(name).eval()
    x = _input()
    levels = model.forward_intermediates(x, intermediates_only=True)
    assert model.prune_intermediate_layers(indices=[1]) == [1]
    assert model.num_classes == 0
    (kept,) = model.forward_intermediates(x, indices=[1], intermediates_only=True)
    assert torch.equal(kept, levels[1])
