"""Bad input: each case gets a one-line error that names the fix and a non-zero exit, and a kill
at any moment leaves nothing half-written where a reader would load it. The README's
reliability table lists these cases."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from conftest import REPO, kill_when, make_image_folder
from safetensors.torch import save_file

from timm_frelu.fileio import file_sha256
from timm_frelu.publishing import publish
from timm_frelu.training.checkpoint import read_checkpoint
from timm_frelu.training.train import train, training_args

# Every case runs the command line, most in a subprocess. `pytest -m 'not slow'` leaves them out.
pytestmark = pytest.mark.slow


def _cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env=dict(os.environ, **(env or {})))


def _error_line(result) -> str:
    """The last line the command wrote to stderr: its error."""
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), num_classes=10, per_class=4)


@pytest.fixture(scope='module')
def run_dir(data_dir, tmp_path_factory):
    return train(training_args(dataset='folder', data_dir=str(data_dir), model='resnet20_frelu.cifar10', epochs=1,
                               batch_size=20, lr=0.05, model_ema=True, threads=1,
                               output=str(tmp_path_factory.mktemp('runs')), experiment='run'))


def test_validate_a_truncated_weights_file(tmp_path, data_dir):
    weights = tmp_path / 'model.safetensors'
    save_file(timm.create_model('resnet20_frelu').state_dict(), weights)
    weights.write_bytes(weights.read_bytes()[:5000])
    result = _cli('-m', 'timm_frelu.validate', '--checkpoint', str(weights), '--dataset', 'folder', '--data-dir', str(data_dir))
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'cannot be read' in _error_line(result) and 'truncated, damaged' in _error_line(result)


def test_show_frelu_of_a_damaged_checkpoint(tmp_path, data_dir):
    # The subcommands of `timm-frelu` report every error of the package's own (TimmFreluError) in one
    # line, not only those each was written to expect.
    damaged = tmp_path / 'last.pth.tar'
    damaged.write_bytes(b'not a checkpoint')
    result = _cli('-m', 'timm_frelu.cli', 'show-frelu', '--checkpoint', str(damaged), '--dataset', 'folder',
                  '--data-dir', str(data_dir), '--output', str(tmp_path / 'frelu'))
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'cannot be read' in _error_line(result) and str(damaged) in _error_line(result)


def test_train_queue_with_a_damaged_last_checkpoint(tmp_path, data_dir):
    # An error from training itself (here reading the run's last checkpoint), not only from the queue
    # file, is reported in one line.
    run = tmp_path / 'runs' / 'first'
    run.mkdir(parents=True)
    (run / 'last.pth.tar').write_bytes(b'not a checkpoint')
    queue = tmp_path / 'queue.yaml'
    queue.write_text(yaml.safe_dump(dict(
        output=str(tmp_path / 'runs'), runs=[dict(experiment='first', args=dict(model='resnet20_relu', epochs=1))],
        defaults=dict(dataset='folder', data_dir=str(data_dir), batch_size=20, threads=1))))
    result = _cli('-m', 'timm_frelu.cli', 'train-queue', str(queue))
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'cannot be read' in _error_line(result) and str(run / 'last.pth.tar') in _error_line(result)


def test_validate_a_checkpoint_with_another_class_count(tmp_path, data_dir):
    weights = tmp_path / 'five.safetensors'
    save_file(timm.create_model('resnet20_frelu', num_classes=5).state_dict(), weights)
    result = _cli('-m', 'timm_frelu.validate', '--checkpoint', str(weights), '--dataset', 'folder', '--data-dir', str(data_dir))
    assert result.returncode == 2 and 'pass --num-classes 5' in _error_line(result)


@pytest.mark.parametrize('command', ['validate', 'train'])
def test_pretrained_weights_that_do_not_exist_are_refused_before_any_work(command, data_dir, tmp_path):
    output = ['--output', str(tmp_path / 'out')] if command == 'train' else []
    result = _cli('-m', f'timm_frelu.{command}', '--model', 'resnet20_frelu.cifar100', '--pretrained',
                  '--dataset', 'folder', '--data-dir', str(data_dir), *output, cwd=tmp_path)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'No pretrained weights exist for resnet20_frelu.cifar100. Published weights: ' in _error_line(result)
    assert not any(tmp_path.iterdir())


def test_validate_shipped_weights_that_fail_their_sha256(data_dir, tmp_path):
    folder = tmp_path / 'checkpoints' / 'resnet20_frelu.cifar10'
    folder.mkdir(parents=True)
    weights = folder / 'model.safetensors'
    save_file(timm.create_model('resnet20_frelu').state_dict(), weights)
    (folder / 'results.json').write_text(json.dumps(dict(weights_sha256=file_sha256(weights))))
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = _cli('-m', 'timm_frelu.validate', '--model', 'resnet20_frelu.cifar10', '--pretrained',
                  '--dataset', 'folder', '--data-dir', str(data_dir),
                  env=dict(TIMM_FRELU_CHECKPOINTS=str(folder.parent), HF_HUB_OFFLINE='1'))
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'results.json publishes' in _error_line(result) and 'Delete it and download or restore it' in _error_line(result)


def test_validate_with_batch_size_zero(data_dir):
    result = _cli('-m', 'timm_frelu.validate', '-b', '0', '--dataset', 'folder', '--data-dir', str(data_dir))
    assert result.returncode == 2 and '--batch-size must be at least 1, got 0' in _error_line(result)


def test_train_with_a_negative_learning_rate(data_dir, tmp_path):
    result = _cli('-m', 'timm_frelu.train', '--lr', '-0.1', '--dataset', 'folder', '--data-dir', str(data_dir),
                  '--output', str(tmp_path))
    assert result.returncode == 2 and '--lr must be positive, got -0.1' in _error_line(result)
    assert not any(tmp_path.iterdir())  # refused before any work


def test_main_job_without_test_data_fails_and_says_why_in_full(tmp_path):
    result = _cli('-m', 'timm_frelu.cli', 'main', '--output', str(tmp_path / 'out'), cwd=tmp_path,
                  env=dict(TIMM_FRELU_SHARED_DATA=str(tmp_path / 'no-data'), TIMM_FRELU_DATA=str(tmp_path / 'no-data')))
    assert result.returncode == 2
    assert 'nothing was validated' in _error_line(result) and 'TIMM_FRELU_SHARED_DATA' in _error_line(result)
    # The reasons are printed whole, fix included.
    assert 'Set TIMM_FRELU_SHARED_DATA to the folder that holds cifar10-lossless-subset.tar.xz and SHA256SUMS.' in result.stdout


def test_publish_a_fine_tuned_head_is_refused_before_any_work(tmp_path):
    run = tmp_path / 'finetuned'
    run.mkdir()
    torch.save({'state_dict': timm.create_model('resnet20_frelu', num_classes=5).state_dict(), 'epoch': 0},
               run / 'last.pth.tar')
    result = _cli('-m', 'timm_frelu.cli', 'publish', str(run), '--name', 'resnet20_frelu.cifar10', '--output',
                  str(tmp_path / 'checkpoints'))
    assert result.returncode == 2 and 'has a 5-class classifier' in _error_line(result)
    assert not (tmp_path / 'checkpoints').exists()


def test_publish_under_a_tag_that_names_no_dataset(run_dir, tmp_path):
    result = _cli('-m', 'timm_frelu.cli', 'publish', str(run_dir), '--name', 'resnet20_frelu.tiny5', '--output',
                  str(tmp_path / 'checkpoints'))
    assert result.returncode == 2 and "The tag 'tiny5' names no dataset" in _error_line(result)


@pytest.mark.parametrize('argv', [['-m', 'timm_frelu.cli', 'sweep', '--help'], ['-m', 'timm_frelu.cli', 'sweep', '-h']])
def test_sweep_help(argv):
    result = _cli(*argv)
    assert result.returncode == 0 and result.stdout.startswith('usage: timm-frelu sweep')


@pytest.mark.parametrize('argv', [
    ['-m', 'timm_frelu.train', '--model', 'resnet19_frelu', '--dataset', 'folder', '--data-dir', 'data'],
    ['-m', 'timm_frelu.validate', '--model', 'resnet19_frelu'],
    ['-m', 'timm_frelu.cli', 'publish', 'run', '--name', 'resnet19_frelu.tuned30_cifar10'],
], ids=['train', 'validate', 'publish'])
def test_a_mistyped_model_name_is_refused_before_any_work_with_the_names_meant(argv, tmp_path):
    result = _cli(*argv, cwd=tmp_path)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert "Unknown model 'resnet19_frelu'. Did you mean resnet18_frelu" in _error_line(result)
    assert not any(tmp_path.iterdir())


YAML_COMMANDS = {
    'train-queue': ['-m', 'timm_frelu.cli', 'train-queue'],
    'sweep': ['-m', 'timm_frelu.cli', 'sweep'],
    'rank-check': ['-m', 'timm_frelu.cli', 'rank-check'],
    'gpu-zoo': ['-m', 'timm_frelu.cli', 'gpu-zoo', 'run', '--time-budget', '10', '--output', 'gpu-out'],
    'train -c': ['-m', 'timm_frelu.train', '-c'],
}
BAD_YAML = {
    'missing': (None, 'missing.yaml: check the path'),
    'malformed': ('runs: [1\n', 'is not valid YAML at line 2, column 1'),
    'a list': ('- a\n- b\n', 'holds a list; it must be a mapping'),
}


@pytest.mark.parametrize('command', YAML_COMMANDS)
@pytest.mark.parametrize('case', BAD_YAML)
def test_a_yaml_file_that_is_missing_or_broken_is_named_in_one_line(command, case, tmp_path):
    text, expected = BAD_YAML[case]
    name = 'missing.yaml' if text is None else 'file.yaml'
    if text is not None:
        (tmp_path / name).write_text(text)
    result = _cli(*YAML_COMMANDS[command], name, cwd=tmp_path)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert name in _error_line(result) and expected in _error_line(result)
    assert not (tmp_path / 'gpu-out').exists()


def test_recipes_without_an_argument_writes_nothing(tmp_path):
    result = _cli('-m', 'timm_frelu.cli', 'recipes', cwd=tmp_path)
    assert result.returncode == 0 and 'timm-frelu recipes --write zoo_configs' in result.stdout
    assert not any(tmp_path.iterdir())


def test_cpu_commands_do_not_warn_about_cuda(tmp_path, data_dir):
    result = _cli('-m', 'timm_frelu.validate', '--dataset', 'folder', '--data-dir', str(data_dir), '--channels-last')
    assert result.returncode == 0 and 'CUDA' not in result.stderr


def test_publish_killed_midway_leaves_the_previous_folder_whole(run_dir, data_dir, tmp_path):
    root = tmp_path / 'checkpoints'
    name = 'resnet20_frelu.test_cifar10'
    publish(run_dir, name, output_root=root, eval_datasets=['folder'], data_dir=str(data_dir), figure=False)
    before = (root / name / 'results.json').read_text()
    cmd = [sys.executable, '-m', 'timm_frelu.cli', 'publish', str(run_dir), '--name', name, '--output', str(root),
           '--eval-dataset', 'folder', '--data-dir', str(data_dir)]
    # Killed while it evaluates and draws into its staging folder.
    kill_when(cmd, lambda: any((p / 'model.safetensors').is_file() for p in root.glob(f'.{name}.*')))
    assert (root / name / 'results.json').read_text() == before
    results = json.loads(before)
    assert file_sha256(root / name / 'model.safetensors') == results['weights_sha256']
    # The next publish clears what the killed one left.
    publish(run_dir, name, output_root=root, eval_datasets=['folder'], data_dir=str(data_dir), figure=False)
    assert [p.name for p in root.iterdir()] == [name]


def test_training_killed_while_writing_a_checkpoint_keeps_the_last_one_whole(data_dir, tmp_path):
    run = tmp_path / 'run'
    cmd = [sys.executable, '-m', 'timm_frelu.train', '--dataset', 'folder', '--data-dir', str(data_dir),
           '--model', 'resnet20_frelu', '--epochs', '50', '--batch-size', '20', '--lr', '0.05', '--threads', '1',
           '--output', str(tmp_path), '--experiment', 'run']
    # Killed while timm writes tmp.pth.tar (watched closely: a write takes milliseconds), after at
    # least one checkpoint is complete.
    kill_when(cmd, lambda: (run / 'last.pth.tar').is_file() and (run / 'tmp.pth.tar').is_file(), poll=0.001)
    checkpoint = read_checkpoint(run / 'last.pth.tar')
    assert checkpoint['epoch'] >= 0 and 'state_dict' in checkpoint
    resumed = _cli('-m', 'timm_frelu.train', '--resume', str(run / 'last.pth.tar'), '--dataset', 'folder',
                   '--data-dir', str(data_dir), '--model', 'resnet20_frelu', '--epochs', str(checkpoint['epoch'] + 2),
                   '--batch-size', '20', '--lr', '0.05', '--threads', '1')
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_a_sweep_without_optuna_names_the_extra_to_install():
    # Optuna is the [zoo] extra, not a dependency of the library: without it, one line that says what to install.
    code = ("import sys\nsys.modules['optuna'] = None  # as if it were not installed\n"
            "from timm_frelu.cli import main\nsys.exit(main(['sweep', '--help']))\n")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "needs optuna, which is not installed: pip install 'timm-frelu[zoo]'" in result.stderr
    assert 'Traceback' not in result.stderr
    # The library itself imports without it.
    code = "import sys\nsys.modules['optuna'] = None\nimport timm, timm_frelu\ntimm.create_model('resnet20_frelu')\n"
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, timeout=300).returncode == 0


@pytest.mark.skipif(not (REPO.parent / 'shared' / 'timm-scripts').is_dir(),
                    reason="timm's scripts are not beside the checkout")
def test_timm_frelu_run_warns_when_a_train_split_makes_no_full_batch(tmp_path):
    # timm's train.py drops the last partial batch: 3 x 40 images and its default batch of 128 train nothing.
    make_image_folder(tmp_path / 'my_images', num_classes=3, per_class=40, splits=('train', 'validation'))
    train_py = REPO.parent / 'shared' / 'timm-scripts' / 'train.py'
    run = [sys.executable, '-m', 'timm_frelu.cli', 'run', str(train_py), '--data-dir', str(tmp_path / 'my_images')]
    warned = subprocess.run(run + ['--help'], capture_output=True, text=True, timeout=300)
    assert warned.returncode == 0
    assert 'holds 120 training images, fewer than the batch of 128' in warned.stderr and 'Pass -b 60' in warned.stderr
    fits = subprocess.run(run + ['-b', '32', '--help'], capture_output=True, text=True, timeout=300)
    assert fits.returncode == 0 and 'warning' not in fits.stderr
