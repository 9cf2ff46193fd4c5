"""The ways users pick up a timm model besides timm.create_model: transformers' AutoModel,
torch.hub, timm's --reparam, and the data config timm resolves for each published tag."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import HUB_TOKEN, REPO
from timm.utils.model import reparameterize_model

import timm_frelu
from timm_frelu import FReLU, FusedFReLU
from timm_frelu.models.blocks import FReLUBasicBlock, FReLUBottleneck
from timm_frelu.pretrained import published_weights, tag_dataset
from timm_frelu.pretrained.datasets import CIFAR10_CLASSES, CIFAR_MEAN_STD
from timm_frelu.publishing import push

CHECKPOINTS = REPO / 'checkpoints'
SHIPPED = sorted(results.parent for results in CHECKPOINTS.glob('*/results.json'))
FRELU_FOLDER = CHECKPOINTS / 'resnet20_frelu.tuned200_cifar10'
shipped = pytest.mark.parametrize('folder', SHIPPED, ids=[folder.name for folder in SHIPPED])
transformers = pytest.importorskip('transformers')

# Logits of a model loaded by transformers, in a fresh interpreter: argv[1] is a folder or Hub repo.
TRANSFORMERS_SCRIPT = '''
import sys, torch, timm_frelu
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(sys.argv[1]).eval()
torch.manual_seed(0)
with torch.no_grad():
    logits = model(torch.randn(2, 3, 32, 32)).logits
print(model.config.id2label[0], model.config.id2label[9], str(model.dtype))
print(logits.flatten().tolist())
'''


def _timm_logits(name):
    model = timm.create_model(name, pretrained=True).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        return model(torch.randn(2, 3, 32, 32))


def _transformers_logits(source, **env):
    result = subprocess.run([sys.executable, '-c', TRANSFORMERS_SCRIPT, str(source)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    labels, logits = result.stdout.strip().splitlines()[-2:]
    return labels.split(), torch.tensor(json.loads(logits))


@shipped
def test_config_json_fits_transformers_and_timm(folder):
    config = json.loads((folder / 'config.json').read_text())
    # transformers passes num_classes itself, takes the class names from the top level and the
    # model's dtype from `dtype` (the weights are stored in fp16).
    assert 'num_classes' not in config.get('model_args', {})
    assert config['label_names'] == list(CIFAR10_CLASSES) and config['dtype'] == 'float32'
    assert config['num_classes'] == 10 and config['pretrained_cfg']['tag'] == folder.name.split('.', 1)[1]


def test_transformers_loads_a_published_folder_with_timms_logits():
    labels, logits = _transformers_logits(FRELU_FOLDER)
    assert labels == ['airplane', 'truck', 'torch.float32']
    assert torch.equal(logits, _timm_logits(FRELU_FOLDER.name).flatten())


@pytest.mark.slow
def test_transformers_loads_from_the_hub(hub, tmp_path):
    push(FRELU_FOLDER, endpoint=hub.endpoint, token=HUB_TOKEN)
    labels, logits = _transformers_logits(f'timm-frelu/{FRELU_FOLDER.name}', HF_ENDPOINT=hub.endpoint,
                                          HF_HUB_OFFLINE='0', HF_HUB_CACHE=str(tmp_path / 'cache'))
    assert labels[:2] == ['airplane', 'truck']
    assert torch.equal(logits, _timm_logits(FRELU_FOLDER.name).flatten())


def test_torch_hub_local_entrypoints_are_timms_models():
    spec = importlib.util.spec_from_file_location('hubconf', REPO / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert {'torch', 'timm'} <= set(hubconf.dependencies)
    names = {name for name in dir(hubconf) if not name.startswith('_') and callable(getattr(hubconf, name))}
    assert set(timm.list_models(module='timm_frelu.models.resnet')) <= names
    model = torch.hub.load(str(REPO), 'resnet20_frelu', source='local', pretrained=True).eval()
    assert model.pretrained_cfg['tag'] == timm.create_model('resnet20_frelu').pretrained_cfg['tag']
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.equal(model(torch.randn(2, 3, 32, 32)), _timm_logits('resnet20_frelu'))
    tagged = torch.hub.load(str(REPO), 'resnet20_relu', source='local', pretrained=True, pretrained_cfg='cifar10')
    assert tagged.pretrained_cfg['tag'] == 'cifar10'


@pytest.mark.parametrize('name', ['resnet20_frelu', 'resnet50_frelu'])
def test_timms_reparameterize_model_folds_frelu_as_fuse_does(name):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 32, 32))  # running statistics that are not the identity
    model.eval()
    reparameterized, fused = reparameterize_model(model), timm_frelu.fuse(model)
    assert not any(isinstance(m, FReLU) for m in reparameterized.modules())
    assert (sum(isinstance(m, FusedFReLU) for m in reparameterized.modules())
            == sum(isinstance(m, FReLU) for m in model.modules()) == sum(isinstance(m, FusedFReLU) for m in fused.modules()))
    # Every FReLU block's BNs are folded as fuse folds them; timm's walk leaves the stem's BN, which no
    # block owns, and the ReLU blocks' (ResNet-50's stage 4), which timm's own blocks do not fold.
    frelu_blocks = [m for m in reparameterized.modules() if isinstance(m, (FReLUBasicBlock, FReLUBottleneck))]
    assert frelu_blocks and not any(isinstance(m, torch.nn.BatchNorm2d) for b in frelu_blocks for m in b.modules())
    assert isinstance(reparameterized.bn1, torch.nn.BatchNorm2d)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert (reparameterized(x) - expected).abs().max() < 1e-4 and (fused(x) - expected).abs().max() < 1e-4


@pytest.mark.parametrize('weights', published_weights(), ids=lambda w: w.name_tag)
def test_resolve_model_data_config_gives_each_tags_cifar_preprocessing(weights):
    model = timm.create_model(weights.name_tag, pretrained=False)
    config = timm.data.resolve_model_data_config(model)
    mean, std = CIFAR_MEAN_STD[tag_dataset(weights.tag)]
    assert config['input_size'] == (3, 32, 32) and config['crop_pct'] == 1.0
    assert config['mean'] == mean and config['std'] == std


def test_the_license_file_is_the_apache_license_the_package_declares():
    import tomllib
    declared = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['license']
    text = (REPO / 'LICENSE').read_text()
    assert declared == 'Apache-2.0' and 'Apache License' in text and 'Version 2.0, January 2004' in text
    assert 'END OF TERMS AND CONDITIONS' in text
