"""The default FReLU (custom autograd in training, BN folded in eval) against the reference ops,
and fuse() for inference."""
import copy

import numpy as np
import pytest
import timm
import torch

import timm_frelu
from timm_frelu import FReLU, FusedFReLU


def _pair(channels=8, bias=False, momentum=0.1):
    efficient = FReLU(channels, bias=bias)
    efficient.bn.momentum = momentum
    with torch.no_grad():
        efficient.bn.weight.uniform_(0.5, 1.5)
        efficient.bn.bias.uniform_(-0.5, 0.5)
        if bias:
            efficient.bias.uniform_(-1, 1)
    naive = copy.deepcopy(efficient)
    naive.efficient = False
    return efficient, naive


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('momentum', [0.1, None])
def test_training_outputs_gradients_and_statistics_match_the_reference(channels_last, bias, momentum):
    efficient, naive = _pair(bias=bias, momentum=momentum)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(6, 8, 10, 10).to(memory_format=fmt)
    grad = torch.randn(6, 8, 10, 10)
    for _ in range(2):  # two steps: running statistics accumulate
        outputs, input_grads = [], []
        for module in (efficient, naive):
            xi = x.clone().requires_grad_()
            out = module(xi)
            out.backward(grad)
            outputs.append(out)
            input_grads.append(xi.grad)
        assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
        assert torch.allclose(input_grads[0], input_grads[1], atol=1e-5)
    for (name, p), q in zip(efficient.named_parameters(), naive.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4, rtol=1e-4), name
    for name in ('running_mean', 'running_var', 'num_batches_tracked'):
        assert torch.allclose(getattr(efficient.bn, name).float(), getattr(naive.bn, name).float(), atol=1e-6), name


def test_eval_matches_the_reference():
    efficient, naive = _pair()
    batch = torch.randn(8, 8, 6, 6)
    for module in (efficient, naive):
        module.train()(batch)  # the same running statistics in both
        module.eval()
    x = torch.randn(4, 8, 6, 6)
    assert torch.allclose(efficient(x), naive(x), atol=1e-5)


def test_training_keeps_less_for_backward_than_the_reference():
    def saved_bytes(module):
        sizes = {}

        def pack(t):
            sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        x = torch.randn(16, 32, 16, 16, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x)
        return sum(sizes.values())
    efficient, naive = _pair(channels=32)
    assert saved_bytes(efficient) < 0.6 * saved_bytes(naive)


def test_autocast_and_gradient_checkpointing_train():
    model = timm.create_model('resnet20_frelu', zero_init_last=False)
    x = torch.randn(4, 3, 32, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def _with_statistics(model):
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32))
    return model.eval()


@pytest.mark.parametrize('name', timm.list_models('*_frelu') + ['resnet20_dyrelub', 'resnet18_relu'])
def test_fuse_matches_the_eval_model(name):
    model = _with_statistics(timm.create_model(name))
    fused = timm_frelu.fuse(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, FusedFReLU) for m in fused.modules()) == sum(isinstance(m, FReLU) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max() < 1e-4


def test_fused_model_is_inference_only_and_exports(tmp_path):
    ort = pytest.importorskip('onnxruntime')
    fused = timm_frelu.fuse(_with_statistics(timm.create_model('resnet20_frelu')))
    x = torch.randn(2, 3, 32, 32)
    torch.onnx.export(fused, (x,), tmp_path / 'fused.onnx', dynamo=True, verbose=False)
    session = ort.InferenceSession(str(tmp_path / 'fused.onnx'), providers=['CPUExecutionProvider'])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert np.abs(out - fused(x).numpy()).max() < 1e-4
    with pytest.raises(RuntimeError, match='cannot train'):
        fused.train()(x)
