"""timm's own scripts, unchanged (../shared/timm-scripts/), on the zoo's models through
``timm-frelu run``: what a timm user types to fine-tune, validate, predict and benchmark."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from safetensors.torch import load_file

from timm_frelu.pretrained.datasets import CIFAR_MEAN_STD
from timm_frelu.training.checkpoint import read_checkpoint
from timm_frelu.training.data.shared import unpacked_archive, verified_archive

SCRIPTS = REPO.parent / 'shared' / 'timm-scripts'
CHECKPOINTS = REPO / 'checkpoints'
NAME = 'resnet20_frelu.cifar10'
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SCRIPTS.is_dir(), reason=f"timm's scripts are not at {SCRIPTS}"),
    pytest.mark.skipif(not (CHECKPOINTS / NAME).is_dir(), reason=f'{NAME} is not shipped'),
]


def _run_script(script, *args, cwd):
    device = [] if script.startswith('onnx_') else ['--device', 'cpu']  # the ONNX scripts have no --device
    result = subprocess.run([sys.executable, '-m', 'timm_frelu.cli', 'run', str(SCRIPTS / script), *args, *device],
                            cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope='module')
def lossless():
    return unpacked_archive(*verified_archive('cifar10-lossless'))


@pytest.fixture(scope='module')
def five_classes(lossless, tmp_path_factory):
    """A few hundred original CIFAR-10 images of five classes, in timm's train/validation folders."""
    root = tmp_path_factory.mktemp('five')
    for split, source, per_class in (('train', 'train', 40), ('validation', 'test', 20)):
        for name in sorted(p.name for p in (lossless / source).iterdir())[:5]:
            (root / split / name).mkdir(parents=True)
            for image in sorted((lossless / source / name).iterdir())[:per_class]:
                shutil.copy(image, root / split / name / image.name)
    return root


def test_train_py_fine_tunes_the_pretrained_model_with_a_new_head(five_classes, tmp_path):
    _run_script('train.py', '--model', NAME, '--pretrained', '--num-classes', '5', '--data-dir', str(five_classes),
                '-b', '20', '--epochs', '1', '--lr', '0.01', '--warmup-epochs', '0', '--workers', '0',
                '--no-prefetcher', '--output', str(tmp_path), '--experiment', 'finetune', cwd=tmp_path)
    state = read_checkpoint(tmp_path / 'finetune' / 'last.pth.tar')['state_dict']
    assert state['fc.weight'].shape == (5, 64)
    shipped = load_file(CHECKPOINTS / NAME / 'model.safetensors')
    # Ten small steps from the shipped backbone stay near it; a fresh init is nowhere near.
    for key in ('conv1.weight', 'layer2.0.act1.weight', 'layer3.2.conv2.weight'):
        moved = (state[key] - shipped[key].float()).abs().max()
        assert moved < 0.1 * shipped[key].float().abs().max(), key
    with open(tmp_path / 'finetune' / 'summary.csv') as f:
        assert float(next(csv.DictReader(f))['eval_top1']) > 20  # 5 classes: chance is 20%


def test_validate_py_matches_the_projects_own_top1(lossless, tmp_path):
    _run_script('validate.py', '--model', NAME, '--pretrained', '--data-dir', str(lossless), '--split', 'test',
                '-b', '100', '--workers', '0', '--results-file', str(tmp_path / 'results.csv'), cwd=tmp_path)
    with open(tmp_path / 'results.csv') as f:
        (row,) = list(csv.DictReader(f))
    recorded = json.loads((CHECKPOINTS / NAME / 'results.json').read_text())
    ours = next(e for e in recorded['evaluations'] if e['data']['dataset'] == 'shared/cifar10-lossless')
    assert abs(float(row['top1']) - ours['top1']) <= 0.1  # one image of 1,000 either way


def _recorded_lossless_top1():
    recorded = json.loads((CHECKPOINTS / NAME / 'results.json').read_text())
    return next(e for e in recorded['evaluations'] if e['data']['dataset'] == 'shared/cifar10-lossless')['top1']


@pytest.mark.parametrize('reparam', [False, True], ids=['unfused', 'reparam'])
def test_validate_py_reparam_matches_the_projects_own_top1(lossless, tmp_path, reparam):
    # --reparam runs timm's reparameterize_model, which folds every FReLU block as timm_frelu.fuse does.
    _run_script('validate.py', '--model', NAME, '--pretrained', '--data-dir', str(lossless), '--split', 'test',
                '-b', '100', '--workers', '0', *(['--reparam'] if reparam else []),
                '--results-file', str(tmp_path / 'results.csv'), cwd=tmp_path)
    with open(tmp_path / 'results.csv') as f:
        (row,) = list(csv.DictReader(f))
    assert abs(float(row['top1']) - _recorded_lossless_top1()) <= 0.1


@pytest.mark.parametrize('reparam', [False, True], ids=['unfused', 'reparam'])
def test_onnx_export_and_validate_give_the_projects_own_top1(lossless, tmp_path, reparam):
    """timm's onnx_export.py (batch 1, the batch axis dynamic), then its onnx_validate.py in batches of 100
    on the 1,000 original-pixel test images, with the model's CIFAR preprocessing (it reads no config)."""
    onnx_file = tmp_path / 'model.onnx'
    _run_script('onnx_export.py', str(onnx_file), '--model', NAME, '--check-forward',
                *(['--reparam'] if reparam else []), cwd=tmp_path)
    import onnx
    (graph_input,) = onnx.load(str(onnx_file)).graph.input
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == 'batch'
    mean, std = CIFAR_MEAN_STD['cifar10']
    result = subprocess.run([sys.executable, str(SCRIPTS / 'onnx_validate.py'), str(lossless / 'test'), '--onnx-input',
                             str(onnx_file), '--img-size', '32', '--crop-pct', '1.0', '--mean', *map(str, mean),
                             '--std', *map(str, std), '-b', '100', '-j', '0'],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    top1 = float(result.stdout.split(' * Prec@1 ')[1].split()[0])
    assert abs(top1 - _recorded_lossless_top1()) <= 0.1  # one image of 1,000 either way


def test_inference_py_writes_labelled_predictions(five_classes, tmp_path):
    _run_script('inference.py', '--model', NAME, '--pretrained', '--data-dir', str(five_classes), '--split',
                'validation', '-b', '50', '--workers', '0', '--results-dir', str(tmp_path), '--results-format',
                'csv', cwd=tmp_path)
    (predictions,) = tmp_path.glob('*.csv')
    with open(predictions) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 100
    truth = {image.name: image.parent.name for image in (five_classes / 'validation').rglob('*.png')}
    assert sum(row['label'] == truth[row['filename']] for row in rows) > 50  # CIFAR-10 class names, mostly right


def test_benchmark_py_measures_the_model(tmp_path):
    _run_script('benchmark.py', '--model', 'resnet20_frelu', '--bench', 'both', '-b', '8', '--num-warm-iter', '1',
                '--num-bench-iter', '5', '--results-file', str(tmp_path / 'bench.csv'), cwd=tmp_path)
    with open(tmp_path / 'bench.csv') as f:
        (row,) = list(csv.DictReader(f))
    assert float(row['infer_samples_per_sec']) > 0 and float(row['train_samples_per_sec']) > 0


def test_run_explains_itself_and_refuses_a_missing_script(tmp_path):
    from timm_frelu.cli import main
    assert main(['run']) == 2 and main(['run', '--help']) == 0
    assert main(['run', str(tmp_path / 'train.py')]) == 2
