"""The training command, run as users run it: in a subprocess, on a small generated dataset."""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from conftest import REPO, kill_when, make_image_folder
from safetensors.torch import save_file

from timm_frelu.training.run_folder import recovery_checkpoints, resume_point
from timm_frelu.training.train import parse_args

# End to end: training runs in subprocesses or in-process. `pytest -m 'not slow'` leaves them out.
pytestmark = pytest.mark.slow

EPOCHS = 4
# The flagships' recipe: lr stepped every update (poly), EMA with warm-up, Nesterov, no decay on
# norms and biases, channels_last. Its resume is what issue "Zoo, part 2" trains across sessions on.
TUNED200 = ['-c', str(REPO / 'zoo_configs' / 'cpu' / 'tuned200' / 'resnet20_frelu_cifar10.yaml')]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), num_classes=4, per_class=80, size=32)


def _train_cmd(data_dir, output, experiment, *extra, recipe=()):
    return [
        sys.executable, '-m', 'timm_frelu.train', *recipe, '--dataset', 'folder', '--data-dir', str(data_dir),
        '--model', 'resnet20_frelu', '--epochs', str(EPOCHS), '--batch-size', '32', '--lr', '0.05',
        '--warmup-epochs', '1', '--model-ema', '--smoothing', '0.1', '--threads', '1', '--seed', '7',
        '--output', str(output), '--experiment', experiment, '--log-interval', '5', *extra,
    ]


def _run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)


def _summary(path):
    with open(path / 'summary.csv') as f:
        return list(csv.DictReader(f))


def _load(path):
    # timm's training checkpoints hold the run's argparse.Namespace beside the tensors.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


def _reference(data_dir, output, recipe=()):
    result = _run(_train_cmd(data_dir, output, 'reference', recipe=recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    return output / 'reference'


@pytest.fixture(scope='module')
def reference_run(data_dir, tmp_path_factory):
    return _reference(data_dir, tmp_path_factory.mktemp('runs'))


@pytest.fixture(scope='module')
def tuned200_reference_run(data_dir, tmp_path_factory):
    return _reference(data_dir, tmp_path_factory.mktemp('tuned200'), recipe=TUNED200)


def test_run_writes_args_summary_and_checkpoints(reference_run):
    args = yaml.safe_load((reference_run / 'args.yaml').read_text())
    assert args['model'] == 'resnet20_frelu' and args['num_classes'] == 4
    assert args['train_data']['num_images'] == 320 and len(args['train_data']['content_sha256']) == 64
    rows = _summary(reference_run)
    assert [int(r['epoch']) for r in rows] == list(range(EPOCHS))
    for key in ('train_loss', 'train_epoch_time', 'train_img_per_sec', 'eval_loss', 'eval_top1', 'eval_top5', 'lr'):
        assert all(float(r[key]) >= 0 for r in rows), key
    assert float(rows[-1]['train_loss']) < float(rows[0]['train_loss'])
    last = _load(reference_run / 'last.pth.tar')
    assert last['epoch'] == EPOCHS - 1 and 'state_dict_ema' in last and 'optimizer' in last
    best = _load(reference_run / 'model_best.pth.tar')
    assert best['metric'] == max(float(r['eval_top1']) for r in rows)


def test_channels_last_run_takes_the_cpu_kernels_and_trains_alike(data_dir, reference_run, tmp_path):
    # channels_last puts FReLU on its fused CPU kernels; rounding aside, the run is the reference run.
    result = _run(_train_cmd(data_dir, tmp_path, 'channels_last', '--channels-last'))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'could not build' not in result.stderr
    rows, reference = _summary(tmp_path / 'channels_last'), _summary(reference_run)
    assert len(rows) == EPOCHS
    assert abs(float(rows[0]['train_loss']) - float(reference[0]['train_loss'])) < 0.01 * float(reference[0]['train_loss'])
    assert float(rows[-1]['train_loss']) < float(rows[0]['train_loss'])


def test_bf16_run_trains_on_the_kernels_and_records_its_precision_across_a_resume(data_dir, reference_run, tmp_path):
    # --amp on the CPU is bf16 autocast, which channels_last FReLU runs on its bf16 kernels; the
    # parameters, optimizer and EMA state stay fp32. Resumed without --amp, the later epochs are
    # fp32, and args.yaml says which epochs were which.
    cmd = _train_cmd(data_dir, tmp_path, 'bf16', '--channels-last', '--amp')
    cmd[cmd.index('--epochs') + 1] = '2'
    result = _run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / 'bf16'
    assert 'in bfloat16 autocast' in result.stderr
    assert yaml.safe_load((run_dir / 'args.yaml').read_text())['precision'] == 'bfloat16 autocast'
    last = _load(run_dir / 'last.pth.tar')
    assert all(t.dtype == torch.float32 for key in ('state_dict', 'state_dict_ema') for t in last[key].values()
               if t.is_floating_point())
    assert all(s.dtype == torch.float32 for state in last['optimizer']['state'].values() for s in state.values()
               if torch.is_tensor(s))
    rows, reference = _summary(run_dir), _summary(reference_run)
    assert abs(float(rows[0]['train_loss']) - float(reference[0]['train_loss'])) < 0.05 * float(reference[0]['train_loss'])

    resumed = [arg for arg in cmd if arg != '--amp'] + ['--resume', str(run_dir / 'last.pth.tar')]
    resumed[resumed.index('--epochs') + 1] = '3'
    result = _run(resumed)
    assert result.returncode == 0, result.stderr[-3000:]
    args = yaml.safe_load((run_dir / 'args.yaml').read_text())
    assert args['precision'] == 'bfloat16 autocast from epoch 0 to 1, float32 from epoch 2'
    assert len(_summary(run_dir)) == 3


def _assert_same_run(run_dir, reference_run):
    """The run's epochs and final weights are the uninterrupted reference run's."""
    resumed, reference = _summary(run_dir), _summary(reference_run)
    assert [r['epoch'] for r in resumed] == [r['epoch'] for r in reference]
    for ours, theirs in zip(resumed, reference):
        for key in ('train_loss', 'eval_loss', 'eval_top1', 'lr'):
            assert float(ours[key]) == pytest.approx(float(theirs[key]), rel=1e-6, abs=1e-9), (ours['epoch'], key)
    final, expected = _load(run_dir / 'last.pth.tar'), _load(reference_run / 'last.pth.tar')
    for key in ('state_dict', 'state_dict_ema'):
        for name, tensor in expected[key].items():
            assert torch.allclose(final[key][name].float(), tensor.float(), atol=1e-6), (key, name)


@pytest.mark.parametrize('recipe, reference', [((), 'reference_run'), (TUNED200, 'tuned200_reference_run')],
                         ids=['default', 'tuned200'])
def test_killed_run_resumes_exactly(data_dir, recipe, reference, request, tmp_path):
    reference_run = request.getfixturevalue(reference)
    cmd = _train_cmd(data_dir, tmp_path, 'killed', recipe=recipe)
    run_dir = tmp_path / 'killed'
    kill_when(cmd, lambda: (run_dir / 'summary.csv').exists() and len(_summary(run_dir)) >= 2, settle=0.5)  # into epoch 2
    killed_at = _load(run_dir / 'last.pth.tar')['epoch']  # loads: not corrupt
    assert 1 <= killed_at < EPOCHS - 1

    result = _run(cmd + ['--resume', str(run_dir / 'last.pth.tar')])
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_run(run_dir, reference_run)


def test_a_run_killed_within_an_epoch_goes_on_from_its_recovery_checkpoint_exactly(data_dir, reference_run, tmp_path):
    """With --recovery-interval, a run cut short mid-epoch loses at most that many batches, not the
    epoch: the resume replays nothing, skips what was trained, and ends where the unbroken run did."""
    cmd = _train_cmd(data_dir, tmp_path, 'recovered', '--recovery-interval', '3')  # 10 batches an epoch
    run_dir = tmp_path / 'recovered'
    # Killed early in epoch 1, with batches to spare before its end would remove the recovery checkpoints.
    kill_when(cmd, lambda: any(epoch == 1 and batches <= 6 for epoch, batches, _ in recovery_checkpoints(run_dir)))
    epoch, batches, recovery = recovery_checkpoints(run_dir)[-1]
    assert resume_point(run_dir) == recovery and batches in (3, 6, 9)

    result = _run(cmd + ['--resume', str(recovery)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'from epoch {epoch}, batch {batches + 1} of 10' in result.stderr
    assert recovery_checkpoints(run_dir) == []  # each epoch's last.pth.tar made them stale
    _assert_same_run(run_dir, reference_run)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, reference_run, tmp_path):
    run_dir = tmp_path / 'diverging'
    shutil.copytree(reference_run, run_dir)
    good = (run_dir / 'last.pth.tar').read_bytes()
    cmd = _train_cmd(data_dir, tmp_path, 'diverging', '--resume', str(run_dir / 'last.pth.tar'),
                     '--epochs', str(EPOCHS + 2), '--lr', '1e30', '--warmup-epochs', '0', '--no-resume-opt')
    result = _run(cmd)
    assert result.returncode == 2
    assert 'The training loss became' in result.stderr and 'last good checkpoint' in result.stderr
    assert f'--resume {run_dir / "last.pth.tar"}' in result.stderr
    assert (run_dir / 'last.pth.tar').read_bytes() == good


def test_fine_tune_pretrained_weights_on_a_new_class_count(reference_run, tmp_path):
    weights = tmp_path / 'model.safetensors'
    save_file(_load(reference_run / 'last.pth.tar')['state_dict'], weights)
    new_data = make_image_folder(tmp_path / 'three', num_classes=3, per_class=12, seed=5)
    result = _run([
        sys.executable, '-m', 'timm_frelu.train', '--dataset', 'folder', '--data-dir', str(new_data),
        '--model', 'resnet20_frelu', '--pretrained', '--pretrained-path', str(weights), '--epochs', '1',
        '--batch-size', '12', '--lr', '1e-4', '--threads', '1', '--output', str(tmp_path), '--experiment', 'finetune'])
    assert result.returncode == 0, result.stderr[-3000:]
    state = _load(tmp_path / 'finetune' / 'last.pth.tar')['state_dict']
    assert state['fc.weight'].shape == (3, 64)
    pretrained = _load(reference_run / 'last.pth.tar')['state_dict']
    fresh = timm.create_model('resnet20_frelu', num_classes=3).state_dict()
    # Three small steps from the given weights stay next to them; an untrained backbone is far away.
    for key in ('conv1.weight', 'layer1.0.act1.weight', 'layer3.2.conv2.weight'):
        assert (state[key] - pretrained[key]).norm() < 0.05 * (fresh[key] - pretrained[key]).norm(), key


def test_bad_arguments_are_clear_errors(data_dir, tmp_path):
    missing = _run(_train_cmd(data_dir, tmp_path, 'x', '--resume', str(tmp_path / 'nope.pth.tar')))
    assert missing.returncode == 2 and 'no such checkpoint' in missing.stderr
    no_data = _run(_train_cmd(tmp_path / 'empty', tmp_path, 'y'))
    assert no_data.returncode == 2 and 'No image folder at' in no_data.stderr
    sync_bn = _run(_train_cmd(data_dir, tmp_path, 'z', '--sync-bn', '--device', 'cpu'))
    assert sync_bn.returncode == 2 and '--sync-bn needs GPUs' in sync_bn.stderr and not (tmp_path / 'z').exists()


def test_yaml_config_sets_defaults_that_flags_override(tmp_path):
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text('model: resnet32_frelu\nepochs: 3\nlr: 0.2\ndecay_milestones: [1, 2]\n')
    args = parse_args(['-c', str(recipe), '--lr', '0.05'])
    assert (args.model, args.epochs, args.lr, args.decay_milestones) == ('resnet32_frelu', 3, 0.05, [1, 2])
    recipe.write_text('modle: resnet32_frelu\n')
    with pytest.raises(SystemExit):
        parse_args(['-c', str(recipe)])


def test_ddp_on_cpu_with_two_processes_matches_single_process_evaluation(data_dir, tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'timm_frelu.train',
           '--dataset', 'folder', '--data-dir', str(data_dir), '--model', 'resnet20_frelu', '--epochs', '1',
           '--batch-size', '16', '--threads', '1', '--device', 'cpu', '--output', str(tmp_path), '--experiment', 'ddp']
    result = _run(cmd, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = _summary(tmp_path / 'ddp')
    check = _run([sys.executable, '-m', 'timm_frelu.validate', '--dataset', 'folder', '--data-dir', str(data_dir),
                  '--model', 'resnet20_frelu', '--num-classes', '4', '--checkpoint', str(tmp_path / 'ddp' / 'last.pth.tar'),
                  '--results-file', str(tmp_path / 'check.json')])
    assert check.returncode == 0, check.stderr[-3000:]
    results = json.loads((tmp_path / 'check.json').read_text())
    assert results['count'] == 320
    assert results['top1'] == pytest.approx(float(row['eval_top1']), abs=1e-6)
    assert results['loss'] == pytest.approx(float(row['eval_loss']), rel=1e-4)


def test_torchcompile_resumes_an_eager_run_and_saves_plain_checkpoints(data_dir, reference_run, tmp_path):
    """--torchcompile (timm's flag) may join a run on resume: the checkpoints it writes keep the
    eager model's keys, so eval, publish and a later eager resume read them unchanged."""
    run_dir = tmp_path / 'compiled'
    shutil.copytree(reference_run, run_dir)
    cmd = _train_cmd(data_dir, tmp_path, 'compiled', '--resume', str(run_dir / 'last.pth.tar'),
                     '--epochs', str(EPOCHS + 1), '--torchcompile')
    result = _run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _summary(run_dir)
    assert [int(r['epoch']) for r in rows] == list(range(EPOCHS + 1))
    assert float(rows[-1]['train_loss']) < float(rows[0]['train_loss'])
    last, before = _load(run_dir / 'last.pth.tar'), _load(reference_run / 'last.pth.tar')
    assert last['epoch'] == EPOCHS
    for key in ('state_dict', 'state_dict_ema'):
        assert last[key].keys() == before[key].keys(), key
