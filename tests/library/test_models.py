import copy
import os
import re
import subprocess
import sys
import time

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import DropPath
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from timm_frelu import FReLU
from timm_frelu.models import ACTS, ARCHS, CifarResNet
from timm_frelu.models.blocks import FReLUBasicBlock, FReLUBottleneck
from timm_frelu.models.registry import check_model_name
from timm_frelu.pretrained import find_weights, published_weights

IMAGENET_FAMILY = {  # name: (block kind, blocks per stage)
    'resnet18_frelu': ('basic', (2, 2, 2, 2)),
    'resnet34_frelu': ('basic', (3, 4, 6, 3)),
    'resnet50_frelu': ('bottleneck', (3, 4, 6, 3)),
    'resnet101_frelu': ('bottleneck', (3, 4, 23, 3)),
    'resnet152_frelu': ('bottleneck', (3, 8, 36, 3)),
}
CIFAR_FAMILY = {f'resnet{depth}_frelu': depth for depth in (20, 32, 44, 56, 110)}
ALL_MODELS = sorted(IMAGENET_FAMILY) + sorted(CIFAR_FAMILY)


def _params(module):
    return sum(p.numel() for p in module.parameters())


def _frelu_params(model):
    return sum(_params(m) for m in model.modules() if isinstance(m, FReLU))


def test_list_models_shows_the_ten_frelu_resnets():
    assert sorted(timm.list_models('*frelu*')) == sorted(ALL_MODELS)


@pytest.mark.parametrize('name', ALL_MODELS)
@pytest.mark.parametrize('tag, num_classes', [('cifar10', 10), ('cifar100', 100)])
def test_tags_map_a_cifar_batch_to_class_logits(name, tag, num_classes):
    model = timm.create_model(f'{name}.{tag}').eval()
    assert model.pretrained_cfg['tag'] == tag
    assert model.pretrained_cfg['input_size'] == (3, 32, 32)
    published = find_weights(name, tag)
    assert model.pretrained_cfg.get('hf_hub_id') == (f'timm-frelu/{name}.{tag}' if published else None)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, num_classes)


def test_name_without_tag_is_the_cifar10_model():
    model = timm.create_model('resnet50_frelu')
    assert model.pretrained_cfg['tag'] == 'cifar10' and model.num_classes == 10
    assert isinstance(model, CifarResNet)


def _frelu_channels(block_kind, blocks_per_stage, stage_channels, frelu_stages):
    """Channel count at every FReLU position the layout implies: after each of a block's convs
    but the last, and after its residual add."""
    total = 0
    for stage, (num_blocks, planes) in enumerate(zip(blocks_per_stage, stage_channels)):
        if stage < frelu_stages:
            per_block = 2 * planes if block_kind == 'basic' else planes + planes + 4 * planes
            total += num_blocks * per_block
    return total


@pytest.mark.parametrize('name', sorted(IMAGENET_FAMILY))
@pytest.mark.parametrize('layout, frelu_stages', [('paper', 3), ('all', 4)])
def test_imagenet_family_parameter_count_matches_layout(name, layout, frelu_stages):
    block_kind, blocks = IMAGENET_FAMILY[name]
    model = timm.create_model(name, act_layout=layout)
    frelu_channels = _frelu_channels(block_kind, blocks, (64, 128, 256, 512), frelu_stages)
    assert _frelu_params(model) == 11 * frelu_channels  # 3x3 depthwise kernel + BN scale and shift
    # The rest is timm's own ResNet, with a 3x3 instead of a 7x7 stem conv.
    timm_twin = timm.create_model(name.replace('_frelu', ''), num_classes=10)
    assert _params(model) - _frelu_params(model) == _params(timm_twin) - 3 * 64 * (49 - 9)


def _cifar_resnet_params(depth, num_classes=10):
    """Parameters of He et al.'s CIFAR ResNet with ReLU and 1x1 projection shortcuts."""
    n = (depth - 2) // 6
    conv_bn = lambda cin, cout, k: cin * cout * k * k + 2 * cout  # noqa: E731
    total = conv_bn(3, 16, 3)
    cin = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += conv_bn(cin, width, 3) + conv_bn(width, width, 3)
            if cin != width:
                total += conv_bn(cin, width, 1)
            cin = width
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize('name', sorted(CIFAR_FAMILY))
@pytest.mark.parametrize('layout', ['paper', 'all'])
def test_cifar_family_parameter_count_matches_layout(name, layout):
    depth = CIFAR_FAMILY[name]
    model = timm.create_model(name, act_layout=layout)
    n = (depth - 2) // 6
    frelu_channels = _frelu_channels('basic', (n, n, n), (16, 32, 64), frelu_stages=3)
    assert _frelu_params(model) == 11 * frelu_channels
    assert _params(model) - _frelu_params(model) == _cifar_resnet_params(depth)


def test_paper_layout_keeps_relu_in_stem_and_stage_4():
    model = timm.create_model('resnet50_frelu')
    assert isinstance(model.act1, torch.nn.ReLU)
    assert all(isinstance(block.act3, FReLU) for stage in (model.layer1, model.layer2, model.layer3) for block in stage)
    assert not any(isinstance(m, FReLU) for m in model.layer4.modules())


@pytest.mark.parametrize('name', sorted(IMAGENET_FAMILY))
def test_imagenet_stem_is_timms_resnet(name):
    model = timm.create_model(name, stem='imagenet').eval()
    assert type(model) is timm.models.resnet.ResNet
    assert model.pretrained_cfg['input_size'] == (3, 224, 224) and model.num_classes == 1000
    assert [info['reduction'] for info in model.feature_info] == [2, 4, 8, 16, 32]
    timm_twin = timm.create_model(name.replace('_frelu', ''))
    assert _params(model) - _frelu_params(model) == _params(timm_twin)
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize('kwargs, message', [
    (dict(stem='imagenet', pretrained=True), 'No ImageNet-stem weights'),
    (dict(stem='tiny'), 'Unknown stem'),
    (dict(act_layout='some'), 'Unknown act_layout'),
])
def test_bad_model_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model('resnet18_frelu', **kwargs)


def test_cifar_resnets_have_no_imagenet_stem():
    with pytest.raises(ValueError, match='CIFAR stem only'):
        timm.create_model('resnet20_frelu', stem='imagenet')


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(RuntimeError, match='Unknown model'):
        timm.create_model('resnet19_frelu')


@pytest.mark.parametrize('name, message', [
    ('resnet19_frelu', "Unknown model 'resnet19_frelu'. Did you mean resnet18_frelu"),
    ('resnet20_frelu.nope', "resnet20_frelu has no tag 'nope'; its tags: cifar10, cifar100, tuned30_cifar10"),
    ('resnet50.cifar10', "resnet50 has no tag 'cifar10'; its tags: a1_in1k"),
])
def test_the_commands_model_check_names_what_was_meant(name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_model_name(name)


@pytest.mark.parametrize('name', ['resnet20_frelu', 'resnet20_frelu.cifar10', 'resnet18_frelu.cifar100', 'resnet50',
                                  'resnet50.a1_in1k', 'hf-hub:org/repo'])
def test_the_commands_model_check_passes_what_timm_can_create(name):
    check_model_name(name)
    if not name.startswith('hf-hub:'):
        timm.create_model(name)


def test_pretrained_without_weights_fails_at_once_and_names_the_weights_that_exist(monkeypatch):
    # Online as far as the Hub client knows: the error must still come before any network attempt.
    monkeypatch.setenv('HF_ENDPOINT', 'http://127.0.0.1:9')
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        timm.create_model('resnet110_frelu.cifar100', pretrained=True)
    assert time.perf_counter() - start < 1
    message = str(info.value)
    assert 'No pretrained weights exist for resnet110_frelu.cifar100' in message and 'pretrained=False' in message
    assert all(w.name_tag in message for w in published_weights())
    assert info.value.__cause__ is None


def test_a_bare_name_without_weights_is_named_as_typed_and_the_listing_it_points_to_lists_them_all(capsys):
    # A bare name is its first tag (its longest-trained weights, else cifar10); the error names the
    # name the user typed, not the tag timm resolved it to.
    assert timm.create_model('resnet50_frelu').pretrained_cfg['tag'] == 'cifar10'
    with pytest.raises(RuntimeError) as info:
        timm.create_model('resnet50_frelu', pretrained=True)
    message = str(info.value)
    assert message.startswith('No pretrained weights exist for resnet50_frelu. ') and 'timm-frelu weights' in message
    from timm_frelu.cli import main
    assert main(['weights']) == 0
    listing = capsys.readouterr().out
    assert all(f"'{w.name_tag}'" in listing for w in published_weights())
    assert all(w.name_tag in message for w in published_weights())


def test_the_registry_lists_exactly_the_published_weights():
    ours = {f'{arch}_{act}' for arch in ARCHS for act in ACTS}
    listed = {name for name in timm.list_pretrained() if name.split('.')[0] in ours}
    assert listed == {w.name_tag for w in published_weights()}
    for name in ours:
        assert timm.is_model_pretrained(name) == any(w.name == name for w in published_weights())
        # Names without weights still build, untrained, for both datasets.
        assert timm.create_model(f'{name}.cifar100').num_classes == 100
    for weights in published_weights():
        cfg = timm.models.get_pretrained_cfg(weights.name_tag)
        assert cfg.hf_hub_id == weights.hf_hub_id and cfg.license == weights.license
        assert all(f"{m['top1']:.2f}%" in note and m['data'] in note for m, note in zip(weights.metrics, cfg.notes))
        assert weights.sha256 in cfg.description


def test_shipped_weights_load_offline_from_the_checkpoints_folder(tmp_path):
    model = timm.create_model('resnet20_frelu.cifar10').eval()
    weights = tmp_path / 'resnet20_frelu.cifar10' / 'model.safetensors'
    weights.parent.mkdir()
    save_file(model.state_dict(), weights)
    x = torch.randn(2, 3, 32, 32)
    torch.save({'x': x, 'y': model(x).detach()}, tmp_path / 'io.pt')
    script = (
        "import sys, torch, timm, timm_frelu\n"
        "io = torch.load(sys.argv[1], weights_only=True)\n"
        "model = timm.create_model('resnet20_frelu.cifar10', pretrained=True).eval()\n"
        "assert model.pretrained_cfg['file'].endswith('resnet20_frelu.cifar10/model.safetensors')\n"
        "assert torch.equal(model(io['x']), io['y'])\n"
    )
    env = dict(os.environ, TIMM_FRELU_CHECKPOINTS=str(tmp_path), HF_HUB_OFFLINE='1')
    result = subprocess.run([sys.executable, '-c', script, str(tmp_path / 'io.pt')], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize('block_cls', [FReLUBasicBlock, FReLUBottleneck])
@pytest.mark.parametrize('training', [False, True])
@pytest.mark.parametrize('extras', [{}, dict(drop_path=DropPath(0.5))])
def test_frelu_block_forward_is_timms(block_cls, training, extras):
    """The FReLU blocks' own forward (plain and lean) computes what timm's block forward does."""
    timm_forward = BasicBlock.forward if issubclass(block_cls, BasicBlock) else Bottleneck.forward
    inplanes = 16 * block_cls.expansion
    downsample = nn.Sequential(nn.Conv2d(inplanes, 32 * block_cls.expansion, 1, stride=2, bias=False),
                               nn.BatchNorm2d(32 * block_cls.expansion))
    block = block_cls(inplanes, 32, stride=2, downsample=downsample, **extras).train(training)
    assert block.lean == (not extras)
    twin = copy.deepcopy(block)
    x = torch.randn(4, inplanes, 8, 8, requires_grad=True)
    x_twin = x.detach().clone().requires_grad_()
    torch.manual_seed(1)
    ours = block(x)
    torch.manual_seed(1)
    theirs = timm_forward(twin, x_twin)
    assert torch.allclose(ours, theirs, atol=1e-5)
    if training:
        ours.square().sum().backward()
        theirs.square().sum().backward()
        assert torch.allclose(x.grad, x_twin.grad, atol=1e-4)
        for (name, p), q in zip(block.named_parameters(), twin.parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-4, rtol=1e-4), name
