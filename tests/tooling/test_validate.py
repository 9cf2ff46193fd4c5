import hashlib
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from timm_frelu.validate import main as validate_main

CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp('weights') / 'model.safetensors'
    save_file(timm.create_model('resnet20_frelu.cifar10').state_dict(), path)
    return path


def test_results_name_the_weights_and_the_data(weights, tmp_path, capsys):
    results_file = tmp_path / 'results.json'
    assert validate_main(['--model', 'resnet20_frelu', '--checkpoint', str(weights), '--dataset',
                          'shared/cifar10-lossless', '--results-file', str(results_file)]) == 0
    results = json.loads(results_file.read_text())
    assert results['count'] == 1000 and 0 <= results['top1'] <= results['top5'] <= 100
    assert list(results['per_class_top1']) == CIFAR10_CLASSES
    assert results['weights']['sha256'] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert results['data']['dataset'] == 'shared/cifar10-lossless' and len(results['data']['content_sha256']) == 64
    printed = capsys.readouterr().out
    assert f"top-1    {results['top1']:.2f} %" in printed


def test_random_weights_score_chance_and_flip_tta_runs(tmp_path):
    results_file = tmp_path / 'r.json'
    assert validate_main(['--model', 'resnet20_frelu', '--dataset', 'shared/cifar10-lossless', '--tta-flip',
                          '--results-file', str(results_file)]) == 0
    results = json.loads(results_file.read_text())
    assert results['tta_flip'] and results['weights']['source'] == 'random init'
    assert results['top1'] < 30


def test_missing_checkpoint_and_class_mismatch_are_clear_errors(tmp_path, capsys):
    assert validate_main(['--checkpoint', str(tmp_path / 'missing.safetensors'), '--dataset', 'shared/cifar10-lossless']) == 2
    error = capsys.readouterr().err
    assert error.startswith('timm-frelu-validate: error: --checkpoint ') and 'no such file' in error
    assert validate_main(['--num-classes', '3', '--dataset', 'shared/cifar10-lossless']) == 2
    assert 'has 10 classes but the model predicts 3' in capsys.readouterr().err


def test_training_checkpoint_with_ema(tmp_path):
    # The EMA weights are trained ones, the model weights an untrained init: only the EMA's score well.
    trained = timm.create_model('resnet20_frelu.cifar10', pretrained=True).state_dict()
    untrained = timm.create_model('resnet20_frelu.cifar10').state_dict()
    torch.save({'state_dict': untrained, 'state_dict_ema': trained, 'epoch': 0}, tmp_path / 'c.pth.tar')
    scores = {}
    for flags in (['--use-ema'], []):
        results_file = tmp_path / f'r{len(flags)}.json'
        assert validate_main(['--checkpoint', str(tmp_path / 'c.pth.tar'), *flags, '--dataset',
                              'shared/cifar10-lossless', '--results-file', str(results_file)]) == 0
        results = json.loads(results_file.read_text())
        assert results['weights']['ema'] is bool(flags)
        scores[bool(flags)] = results['top1']
    assert scores[True] > 80 and scores[False] < 30
