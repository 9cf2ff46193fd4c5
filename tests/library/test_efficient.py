"""The default FReLU (custom autograd in training, BN folded in eval) against the reference ops,
and fuse() for inference."""
import copy
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

import timm_frelu
from timm_frelu import FReLU, FusedFReLU
from timm_frelu.layers.cpu_kernels import cpu_kernels, cpu_kernels_apply
from timm_frelu.models.blocks import FReLUBasicBlock, FReLUBottleneck
from timm_frelu.studies.measure import saved_activation_bytes


def _pair(channels=8, bias=False, momentum=0.1, kernel_size=3):
    efficient = FReLU(channels, kernel_size=kernel_size, bias=bias)
    efficient.bn.momentum = momentum
    with torch.no_grad():
        efficient.bn.weight.uniform_(0.5, 1.5)
        efficient.bn.bias.uniform_(-0.5, 0.5)
        if bias:
            efficient.bias.uniform_(-1, 1)
    naive = copy.deepcopy(efficient)
    naive.efficient = False
    return efficient, naive


def _assert_trains_like(efficient, naive, x):
    """Two training steps (running statistics accumulate) give the same outputs, input and
    parameter gradients, and buffers."""
    for _ in range(2):
        outputs, input_grads = [], []
        for module in (efficient, naive):
            module.zero_grad()
            xi = x.clone().requires_grad_()
            out = module(xi)
            out.square().sum().backward()
            outputs.append(out)
            input_grads.append(xi.grad)
        assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
        assert torch.allclose(input_grads[0], input_grads[1], atol=1e-5)
    # Rounding noise scales with the largest gradient: the conv bias's true gradient is zero (the
    # BN after it cancels it), so each implementation's is noise of that size.
    grad_scale = max(q.grad.abs().max().item() for q in naive.parameters())
    for (name, p), q in zip(efficient.named_parameters(), naive.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5 * grad_scale, rtol=1e-4), name
    for (name, b), c in zip(efficient.named_buffers(), naive.buffers()):
        assert torch.allclose(b.float(), c.float(), atol=1e-6), name


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('momentum', [0.1, None])
def test_training_outputs_gradients_and_statistics_match_the_reference(channels_last, bias, momentum):
    efficient, naive = _pair(bias=bias, momentum=momentum)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    _assert_trains_like(efficient, naive, torch.randn(6, 8, 10, 10).to(memory_format=fmt))


needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get('CXX', 'c++')) is None,
                                    reason='no C++ compiler to build the CPU kernels')


@needs_compiler
def test_cpu_kernels_build_and_take_fp32_channels_last_input():
    assert cpu_kernels() is not None
    x = torch.randn(2, 8, 5, 5)
    assert cpu_kernels_apply(x.to(memory_format=torch.channels_last))
    assert not cpu_kernels_apply(x)
    assert not cpu_kernels_apply(x.double().to(memory_format=torch.channels_last))
    # One value per channel is BN's error to raise, from the stock ops.
    assert not cpu_kernels_apply(torch.randn(1, 8, 1, 1))


@needs_compiler
@pytest.mark.parametrize('channels, kernel_size, bias', [(3, 3, False), (12, 3, True), (16, 5, False), (32, 3, True)])
def test_cpu_kernels_train_like_the_reference(channels, kernel_size, bias):
    # 3, 12 and 16 or 32 channels take the kernels' 1-, 4- and 16-wide (8-wide below AVX-512)
    # channel blocks; 3x3 takes the unrolled conv, 5x5 the general one; rows of 7 pixels leave a
    # remainder after the 4-pixel blocks.
    efficient, naive = _pair(channels, bias=bias, kernel_size=kernel_size)
    _assert_trains_like(efficient, naive, torch.randn(4, channels, 7, 7).to(memory_format=torch.channels_last))


@needs_compiler
@pytest.mark.parametrize('threads', [1, 3])
def test_cpu_kernels_train_like_the_reference_whichever_rows_each_thread_takes(threads):
    # The kernels give each thread a chunk of image rows: 3 threads split these 14 rows inside
    # images, where each chunk's windows reach into its neighbours' rows.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        efficient, naive = _pair(16, bias=True)
        _assert_trains_like(efficient, naive, torch.randn(2, 16, 7, 5).to(memory_format=torch.channels_last))
    finally:
        torch.set_num_threads(before)


def _bf16_close(actual, expected, tolerance=0.03):
    """Within bf16 rounding of the fp32 reference: 8 bits of mantissa, ~0.4% per rounding,
    several roundings deep."""
    actual, expected = actual.float(), expected.float()
    return (actual - expected).abs().max().item() <= tolerance * expected.abs().max().item()


def _train_step(module, x, autocast):
    """Outputs, input gradient and the parameters' gradients of one training step."""
    module.zero_grad()
    xi = x.clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        out = module(xi)
    out.float().square().sum().backward()
    return out, xi.grad, [p.grad for p in module.parameters()]


@needs_compiler
@pytest.mark.parametrize('channels', [8, 16])
@pytest.mark.parametrize('bf16', ['autocast', 'model'])
def test_cpu_kernels_train_in_bf16_like_the_fp32_reference(channels, bf16):
    # 8 and 16 channels take the 8- and 16-wide channel blocks (8 only below AVX-512).
    efficient, naive = _pair(channels)
    # The reference sees the same (bf16-rounded) input and parameters: rounding that changes which
    # side of the max wins would move the gradient for a reason that is not the kernels'.
    for module in (efficient, naive):
        module.bfloat16().float()
    x = torch.randn(4, channels, 7, 7).bfloat16().float().to(memory_format=torch.channels_last)
    expected, expected_grad, expected_param_grads = _train_step(naive, x, autocast=False)
    if bf16 == 'model':
        efficient = efficient.bfloat16()
    out, grad, param_grads = _train_step(efficient, x.bfloat16(), autocast=bf16 == 'autocast')
    assert out.dtype == grad.dtype == torch.bfloat16
    assert out.grad_fn.fused, 'the bf16 input did not take the CPU kernels'
    assert _bf16_close(out, expected) and _bf16_close(grad, expected_grad)
    for (name, p), g, expected_g in zip(efficient.named_parameters(), param_grads, expected_param_grads):
        assert g.dtype == p.dtype, name
        assert _bf16_close(g, expected_g), name
    for (name, b), c in zip(efficient.named_buffers(), naive.buffers()):
        assert _bf16_close(b, c), name


@needs_compiler
def test_autocast_frelu_resnet_takes_the_kernels_and_trains_like_stock_autocast():
    """Under autocast the blocks' lean path (BN -> FReLU and residual add -> FReLU as one node)
    runs the bf16 kernels. Through a whole network bf16 moves the gradients well beyond one
    rounding, with stock ops too; the kernels' gradient must point where fp32's does at least as
    closely as stock autocast's."""
    torch.manual_seed(0)
    efficient = _randomize_batch_norms(timm.create_model('resnet20_frelu', zero_init_last=False))
    naive = copy.deepcopy(efficient)
    for module in naive.modules():
        if isinstance(module, FReLU):
            module.efficient = False
    fused_nodes = []
    for block in efficient.layer1:  # a block's output is its last FReLU's node
        block.register_forward_hook(lambda module, args, out: fused_nodes.append(getattr(out.grad_fn, 'fused', None)))
    x, target = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))

    def gradient(model, autocast):
        model.zero_grad()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        torch.nn.functional.cross_entropy(out.float(), target).backward()
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    fp32 = gradient(copy.deepcopy(naive), autocast=False)
    stock, kernels = gradient(naive, autocast=True), gradient(efficient, autocast=True)
    assert fused_nodes == [True] * len(efficient.layer1)
    similarity = torch.nn.functional.cosine_similarity
    assert similarity(kernels, fp32, dim=0) >= max(0.9, similarity(stock, fp32, dim=0) - 0.02)


@needs_compiler
@pytest.mark.parametrize('channels', [8, 16])
def test_bf16_eval_and_fuse_match_the_fp32_reference(channels):
    efficient, naive = _pair(channels)
    for module in (efficient, naive):
        module.train()(torch.randn(8, channels, 6, 6))
        module.eval()
    x = torch.randn(4, channels, 6, 6).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = naive(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            in_autocast = efficient(x.bfloat16())
        fused = FusedFReLU.from_frelu(efficient).bfloat16()(x.bfloat16())
    for out in (in_autocast, fused):
        assert out.dtype == torch.bfloat16 and _bf16_close(out, expected)


def _cpu_has(flag: str) -> bool:
    try:
        with open('/proc/cpuinfo') as f:
            return any(line.startswith('flags') and flag in line.split() for line in f)
    except OSError:
        return False


@needs_compiler
@pytest.mark.slow
@pytest.mark.skipif(not _cpu_has('avx512f'), reason='the AVX2 build is what this machine runs already')
def test_cpu_kernels_built_for_avx2_train_like_the_reference():
    # An AVX-512 machine runs the AVX2 build when torch's dispatch is capped, as on an AVX2 CPU.
    env = dict(os.environ, ATEN_CPU_CAPABILITY='avx2')
    code = ('from timm_frelu.layers.cpu_kernels import cpu_kernels\n'
            'print(cpu_kernels().__name__)\n')
    built = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert built.stdout.split() == ['timm_frelu_cpu_avx2'], built.stderr
    tests = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', __file__,
                            '-k', 'cpu_kernels_train or eval_matches or channels_last_inference or nan_propagates or bf16'],
                           env=env, capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout[-3000:]


@pytest.mark.slow
def test_training_without_the_cpu_kernels_warns_and_falls_back(tmp_path):
    # A compiler that isn't there, and an empty build cache: the build fails, FReLU says so once
    # and trains with the stock ops.
    env = dict(os.environ, CXX=str(tmp_path / 'no-such-compiler'), TORCH_EXTENSIONS_DIR=str(tmp_path / 'cache'))
    code = ('import torch, warnings\n'
            'from timm_frelu import FReLU\n'
            'x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last).requires_grad_()\n'
            'with warnings.catch_warnings(record=True) as caught:\n'
            '    warnings.simplefilter("always")\n'
            '    for _ in range(2):\n'
            '        FReLU(8)(x).sum().backward()\n'
            'print(sum("a C++ compiler (" in str(w.message) and "not installed" in str(w.message) for w in caught))\n'
            'print(bool(torch.isfinite(x.grad).all()))\n')
    result = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['1', 'True']


def test_eval_matches_the_reference():
    efficient, naive = _pair()
    batch = torch.randn(8, 8, 6, 6)
    for module in (efficient, naive):
        module.train()(batch)  # the same running statistics in both
        module.eval()
    x = torch.randn(4, 8, 6, 6)
    assert torch.allclose(efficient(x), naive(x), atol=1e-5)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('channels', [8, 16])
def test_nan_propagates_like_the_reference(training, channels, dtype):
    # torch.maximum keeps a NaN from either side; so must the kernels, in every vector width and
    # in bf16 as in fp32 (the reference).
    efficient, naive = _pair(channels)
    x = torch.randn(2, channels, 6, 6).to(memory_format=torch.channels_last)
    x[0, 1, 2, 3] = float('nan')
    with torch.no_grad():
        expected = naive.train(training)(x)
        out = efficient.to(dtype).train(training)(x.to(dtype))
    assert out.dtype == dtype and expected.isnan().any()
    assert torch.equal(out.isnan(), expected.isnan())


def test_training_keeps_less_for_backward_than_the_reference():
    efficient, naive = _pair(channels=32)
    x = torch.randn(16, 32, 16, 16, requires_grad=True)
    assert saved_activation_bytes(efficient, x) < 0.6 * saved_activation_bytes(naive, x)


def _randomize_batch_norms(model):
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('name, kwargs', [
    ('resnet20_frelu', {}),
    ('resnet50_frelu', dict(layers=(1, 2, 1, 1), channels=(8, 16, 16, 16), stem_width=8, act_layout='all')),
])
def test_frelu_blocks_train_like_the_reference(name, kwargs, channels_last):
    efficient = _randomize_batch_norms(timm.create_model(name, **kwargs))
    blocks = [block for i in (1, 2, 3) for block in getattr(efficient, f'layer{i}')]
    assert all(isinstance(block, (FReLUBasicBlock, FReLUBottleneck)) and block.lean for block in blocks)
    naive = copy.deepcopy(efficient)
    for module in naive.modules():
        if isinstance(module, FReLU):
            module.efficient = False
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    _assert_trains_like(efficient, naive, torch.randn(4, 3, 16, 16).to(memory_format=fmt))
    assert efficient.state_dict().keys() == naive.state_dict().keys()
    assert 'layer1.0.act1.weight' in efficient.state_dict()


@pytest.mark.parametrize('channels_last', [False, True])
def test_frelu_resnet_keeps_little_more_for_backward_than_its_relu_twin(channels_last):
    # The blocks hand each BN -> FReLU (and residual add -> FReLU) to one autograd node,
    # which keeps the conv output and block input the ReLU block keeps anyway, plus a byte mask;
    # so do the CPU kernels, which channels_last input takes.
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(8, 3, 32, 32).to(memory_format=fmt)
    frelu = saved_activation_bytes(timm.create_model('resnet20_frelu').train().to(memory_format=fmt), x)
    relu = saved_activation_bytes(timm.create_model('resnet20_relu').train().to(memory_format=fmt), x)
    assert frelu < 1.25 * relu


def test_autocast_and_gradient_checkpointing_train():
    x = torch.randn(4, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = timm.create_model('resnet20_frelu', zero_init_last=False)
        model.set_grad_checkpointing(checkpointing)
        assert model.grad_checkpointing == checkpointing
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        grads.append(model.layer2[0].act1.weight.grad)
    # Recomputing under checkpointing repeats the same bf16 forward: the same gradients.
    assert torch.allclose(grads[0], grads[1], rtol=1e-2, atol=1e-3)


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


def test_channels_last_inference_matches_the_reference():
    # On CPU, fp32 channels_last input without gradients goes through the one-pass inference kernel.
    model = _with_statistics(timm.create_model('resnet20_frelu')).to(memory_format=torch.channels_last)
    naive = copy.deepcopy(model)
    for module in naive.modules():
        if isinstance(module, FReLU):
            module.efficient = False
    fused = timm_frelu.fuse(model)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = naive(x)
        assert (model(x) - reference).abs().max() < 1e-4
        assert (fused(x) - reference).abs().max() < 1e-4
    # With a gradient wanted, the stock ops run, and the gradient is the reference's.
    grads = []
    for m in (fused, naive):
        xi = x.clone().requires_grad_()
        m(xi).sum().backward()
        grads.append(xi.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-4)


@pytest.mark.slow
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


@needs_compiler
@pytest.mark.parametrize('training', [True, False])
def test_a_plain_nchw_batch_takes_the_cpu_kernels(training):
    """model(x) on an ordinary NCHW tensor: the stem conv moves the input to the kernels' layout,
    and the network carries on in it, with the reference's results."""
    model = _with_statistics(_randomize_batch_norms(timm.create_model('resnet20_frelu'))).train(training)
    naive = copy.deepcopy(model)
    for module in naive.modules():
        if isinstance(module, FReLU):
            module.efficient = False
    stem_outputs = []
    model.conv1.register_forward_hook(lambda module, args, out: stem_outputs.append(out))
    x = torch.randn(4, 3, 16, 16)
    features, expected = model.forward_features(x), naive.forward_features(x)
    assert not x.is_contiguous(memory_format=torch.channels_last)
    assert stem_outputs[0].is_contiguous(memory_format=torch.channels_last)
    assert features.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(features, expected, atol=1e-5 * expected.abs().max().item())
