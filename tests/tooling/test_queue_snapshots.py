"""Lean snapshots: a big run's weights alone, int8, to commit, and the run continued from them."""
import csv

import timm
import torch
import yaml
from safetensors.torch import load_file

from timm_frelu.training.queue import (LEAN_WEIGHTS, RESTART_WEIGHTS, read_lean_snapshot, restore_queue, run_state,
                                       snapshot_queue, write_lean_snapshot)

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


def test_a_lean_snapshot_keeps_the_weights_within_int8_rounding_at_a_quarter_of_fp32(tmp_path):
    model = timm.create_model('resnet18_relu')
    _fake_run(tmp_path / 'run', model, epochs_done=4)
    size = write_lean_snapshot(tmp_path / 'run', tmp_path / 'kept')
    weights, done = read_lean_snapshot(tmp_path / 'kept' / LEAN_WEIGHTS)
    assert done == 4
    fp32_bytes = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    assert size < 0.27 * fp32_bytes
    for name, expected in model.state_dict().items():
        restored = weights[name]
        assert restored.shape == expected.shape and restored.dtype == expected.dtype, name
        if expected.dim() > 1:
            # Half a step of the channel's int8 grid at most.
            step = expected.flatten(1).abs().amax(dim=1) / 127
            assert ((restored - expected).flatten(1).abs() <= step[:, None] / 2 + 1e-7).all(), name
        else:
            assert torch.equal(restored, expected), name  # BN statistics, biases, counters: as they were
    assert not (tmp_path / 'kept' / 'last.pth.tar').exists()
    assert (tmp_path / 'kept' / 'summary.csv').read_text() == (tmp_path / 'run' / 'summary.csv').read_text()


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
