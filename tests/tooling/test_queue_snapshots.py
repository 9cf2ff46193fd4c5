"""Lean snapshots: a big run's weights alone, rounded to 4 bits, to commit, and the run continued from them."""
import csv
import os
import subprocess

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file, save_file

from timm_frelu.training.git_history import committed_bytes
from timm_frelu.training.train import restart_record
from timm_frelu.training.lean_weights import round_weights, unround_weights
from timm_frelu.training.queue import (LEAN_WEIGHTS, RESTART_WEIGHTS, QueueError, load_queue, read_lean_snapshot,
                                       restore_queue, run_state, snapshot_queue, write_lean_snapshot)

EPOCHS = 9


def _fake_run(run_dir, model, epochs_done):
    """A run folder as training leaves it after ``epochs_done`` epochs (its checkpoint's model
    weights are ``model``'s; optimizer and EMA state as training keeps them)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    torch.save({'epoch': epochs_done - 1, 'state_dict': state, 'state_dict_ema': state,
                'optimizer': {'state': {i: {'momentum_buffer': p.detach().clone()} for i, p in enumerate(model.parameters())},
                              'param_groups': []}}, run_dir / 'last.pth.tar')
    (run_dir / 'args.yaml').write_text(yaml.safe_dump(dict(model='resnet18_relu', epochs=EPOCHS)))
    with open(run_dir / 'summary.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['epoch', 'train_loss'])
        writer.writerows([e, 2.0 - e / 10] for e in range(epochs_done))


def _grid_steps(tensor, group=64):
    """The 4-bit grid step of each value's group: groups of ``group`` within an output channel."""
    rows = tensor.flatten(1)
    size = min(group, rows.shape[1])
    steps = torch.zeros_like(rows)
    for start in range(0, rows.shape[1], size):
        steps[:, start:start + size] = rows[:, start:start + size].abs().amax(dim=1, keepdim=True) / 7
    return steps.view(tensor.shape)


def test_a_lean_snapshot_keeps_the_weights_within_4_bit_rounding_at_under_a_seventh_of_fp32(tmp_path):
    model = timm.create_model('resnet18_frelu')  # FReLU's depthwise kernels: 9 weights a channel
    _fake_run(tmp_path / 'run', model, epochs_done=4)
    size = write_lean_snapshot(tmp_path / 'run', tmp_path / 'kept')
    weights, done = read_lean_snapshot(tmp_path / 'kept' / LEAN_WEIGHTS)
    assert done == 4
    fp32_bytes = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    assert size < fp32_bytes / 7
    for name, expected in model.state_dict().items():
        restored = weights[name]
        assert restored.shape == expected.shape and restored.dtype == expected.dtype, name
        if expected.dim() > 1:
            # Half a step of the group's grid, and the bf16 rounding of that step.
            assert ((restored - expected).abs() <= _grid_steps(expected) * (0.5 + 2 ** -7) + 1e-12).all(), name
        else:
            assert torch.equal(restored, expected), name  # BN statistics, biases, counters: as they were
    assert not (tmp_path / 'kept' / 'last.pth.tar').exists()
    assert (tmp_path / 'kept' / 'summary.csv').read_text() == (tmp_path / 'run' / 'summary.csv').read_text()


def test_rounding_groups_stay_within_an_output_channel():
    # Channel 1's weights are 1000x channel 0's: a group spanning both would round channel 0 to zero.
    weight = torch.cat([torch.linspace(-1e-3, 1e-3, 9), torch.linspace(-1.0, 1.0, 9)]).view(2, 1, 3, 3)
    for bits in (4, 8):
        restored = unround_weights(*round_weights({'w': weight}, bits=bits))['w']
        relative = (restored - weight).abs().amax(dim=(1, 2, 3)) / weight.abs().amax(dim=(1, 2, 3))
        assert (relative <= 0.5 / (2 ** (bits - 1) - 1) * (1 + 2 ** -7)).all(), bits


def test_channels_that_end_in_a_partial_group_come_back_whole_and_savable(tmp_path):
    # ResNet-20's 3x3 convolutions have 144 or 288 weights a channel: groups of 64 leave a partial one.
    weight = torch.randn(16, 16, 3, 3).contiguous(memory_format=torch.channels_last)
    for bits in (4, 8):
        restored = unround_weights(*round_weights({'w': weight}, bits=bits))['w']
        step = _grid_steps(weight) / (1 if bits == 4 else 127 / 7)
        assert ((restored - weight).abs() <= step * (0.5 + 2 ** -7) + 1e-12).all(), bits
        save_file({'w': restored}, tmp_path / f'{bits}.safetensors')  # as the restart weights are written


def test_a_snapshot_in_another_format_is_refused_with_the_fix(tmp_path):
    spec, keep, runs = _queue(tmp_path), tmp_path / 'keep', tmp_path / 'runs'
    _fake_run(runs / 'big', timm.create_model('resnet18_relu'), epochs_done=4)
    snapshot_queue(spec, runs, keep, lean=True)
    weights = load_file(keep / 'big' / LEAN_WEIGHTS)
    save_file(weights, keep / 'big' / LEAN_WEIGHTS, metadata={'epochs_done': '4', 'format': 'int8 per output channel'})
    with pytest.raises(QueueError, match='snapshot the run again with this version'):
        restore_queue(spec, tmp_path / 'fresh', keep)
    assert not (tmp_path / 'fresh' / 'big').exists()


def _queue(tmp_path):
    return dict(output=str(tmp_path / 'runs'), defaults=dict(epochs=EPOCHS),
                runs=[dict(experiment='big', args=dict(model='resnet18_relu'))])


def test_lean_snapshots_are_written_a_third_of_the_run_apart(tmp_path):
    spec, keep, run_dir = _queue(tmp_path), tmp_path / 'keep', tmp_path / 'runs' / 'big'
    model = timm.create_model('resnet18_relu')
    _fake_run(run_dir, model, epochs_done=2)
    # Under a third of 9 epochs: nothing to keep yet, and losing it costs less than a third.
    assert 'lean snapshot not written: 2 of 9 epochs done' in snapshot_queue(spec, tmp_path / 'runs', keep)['big']
    assert not (keep / 'big').exists()
    _fake_run(run_dir, model, epochs_done=3)
    assert snapshot_queue(spec, tmp_path / 'runs', keep)['big'].startswith('lean snapshot kept, 3 of 9 epochs done')
    _fake_run(run_dir, model, epochs_done=5)
    assert 'the snapshot there has 3' in snapshot_queue(spec, tmp_path / 'runs', keep)['big']
    _fake_run(run_dir, model, epochs_done=6)
    assert snapshot_queue(spec, tmp_path / 'runs', keep)['big'].startswith('lean snapshot kept, 6 of 9 epochs done')


def test_a_restored_lean_snapshot_continues_the_run_from_its_weights(tmp_path):
    spec, keep, runs = _queue(tmp_path), tmp_path / 'keep', tmp_path / 'runs'
    _fake_run(runs / 'big', timm.create_model('resnet18_relu'), epochs_done=4)
    snapshot_queue(spec, runs, keep, lean=True)
    # A fresh machine has no run folder; one further behind is replaced too, its checkpoint kept aside.
    _fake_run(tmp_path / 'fresh' / 'big', timm.create_model('resnet18_relu'), epochs_done=1)
    states = restore_queue(spec, tmp_path / 'fresh', keep)
    assert states['big'] == 'restored from its lean snapshot, 4 epochs done (fresh momentum and EMA)'
    restored = tmp_path / 'fresh' / 'big'
    assert run_state(restored, EPOCHS) == 'restart'
    assert (restored / 'last-before-restore.pth.tar').is_file() and not (restored / 'last.pth.tar').exists()
    weights, _ = read_lean_snapshot(keep / 'big' / LEAN_WEIGHTS)
    start = load_file(restored / RESTART_WEIGHTS)
    assert start.keys() == weights.keys() and all(torch.equal(start[k], weights[k]) for k in weights)
    timm.create_model('resnet18_relu').load_state_dict(start)
    # Restoring again finds the run folder as far along as the snapshot.
    assert restore_queue(spec, tmp_path / 'fresh', keep)['big'].startswith('not restored')


def test_a_full_snapshot_is_kept_for_a_small_checkpoint(tmp_path):
    spec, keep, runs = _queue(tmp_path), tmp_path / 'keep', tmp_path / 'runs'
    spec['runs'][0]['args']['model'] = 'resnet20_relu'
    _fake_run(runs / 'big', timm.create_model('resnet20_relu'), epochs_done=1)
    assert snapshot_queue(spec, runs, keep)['big'] == 'snapshot kept, 1 of 9 epochs done'
    assert (keep / 'big' / 'last.pth.tar').is_file() and not (keep / 'big' / LEAN_WEIGHTS).exists()


def _git(repo, *args):
    subprocess.run(['git', '-c', 'user.name=test', '-c', 'user.email=test@example.com', *args], cwd=repo, check=True,
                   capture_output=True)


def test_a_lean_snapshot_past_the_queues_git_history_budget_is_not_written(tmp_path):
    repo, runs = tmp_path / 'repo', tmp_path / 'runs'
    keep = repo / 'checkpoints' / 'in-progress'
    spec = _queue(tmp_path)
    # An earlier run's snapshot, committed and then removed: its 4 MB stay in the history.
    (keep / 'earlier').mkdir(parents=True)
    (keep / 'earlier' / LEAN_WEIGHTS).write_bytes(os.urandom(4_000_000))
    _git(repo, 'init', '-q')
    _git(repo, 'add', '-A')
    _git(repo, 'commit', '-q', '-m', 'earlier snapshot')
    _git(repo, 'rm', '-q', '-r', 'checkpoints')
    _git(repo, 'commit', '-q', '-m', 'earlier run finished')
    _fake_run(runs / 'big', timm.create_model('resnet18_relu'), epochs_done=4)  # a 4-bit snapshot of about 5.5 MB
    spec['snapshot_history_mb'] = 8
    state = snapshot_queue(spec, runs, keep)['big']
    assert state.startswith('lean snapshot not written: the snapshots of this queue already take 4.0 MB of git history')
    assert 'snapshot_history_mb' in state and 'a fresh machine would redo 4 epochs' in state
    assert not keep.exists() or not any(keep.iterdir())  # nothing kept, no staging left behind
    spec['snapshot_history_mb'] = 12
    state = snapshot_queue(spec, runs, keep)['big']
    assert state.startswith('lean snapshot kept, 4 of 9 epochs done')
    # What it adds is counted as git will store it: the earlier 4 MB plus a compressed blob of the new file.
    _git(repo, 'add', '-A')
    _git(repo, 'commit', '-q', '-m', 'big snapshot')
    assert state.endswith(f"committed, the queue's snapshots take {committed_bytes(keep) / 1e6:.1f} MB of the 12 MB "
                          'of git history it allows')
    assert sorted(p.name for p in keep.iterdir()) == ['big']
    assert sorted(p.name for p in (keep / 'big').iterdir()) == sorted(['args.yaml', 'summary.csv', LEAN_WEIGHTS])


def test_a_history_budget_that_is_not_a_positive_number_is_refused(tmp_path):
    queue = tmp_path / 'queue.yaml'
    queue.write_text(yaml.safe_dump(dict(_queue(tmp_path), snapshot_history_mb='100 MB')))
    with pytest.raises(QueueError, match='snapshot_history_mb must be a positive number of megabytes'):
        load_queue(queue)


def test_a_restart_from_weights_alone_stays_on_record_through_later_exact_resumes():
    restarted = restart_record({}, 7, '/runs/big/restart.safetensors')
    assert restarted == dict(restarts=[dict(epoch=7, weights='restart.safetensors')])
    # The args.yaml the restart wrote; an exact resume at epoch 9 passes neither option again.
    written = dict(restarted, initial_checkpoint='/runs/big/restart.safetensors', start_epoch=7)
    assert restart_record(written, 9, None) == restarted
    assert restart_record(written, 7, None, mid_epoch=True) == restarted  # from a recovery checkpoint within epoch 7
    assert restart_record(dict(written, restarts=None), 9, None) == restarted  # a record from before restarts were kept
    # Restored again at epoch 14, and then resumed from an older checkpoint at epoch 10: later ones go.
    twice = restart_record(dict(written, start_epoch=None, initial_checkpoint=None), 14, '/elsewhere/restart.safetensors')
    assert [r['epoch'] for r in twice['restarts']] == [7, 14]
    assert restart_record(twice, 10, None) == restarted
    assert restart_record({}, 0, 'pretrained.safetensors') == {}  # starting from weights is not a restart
