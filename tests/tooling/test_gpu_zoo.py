"""The GPU zoo job, end to end on the CPU with a tiny plan: the job as the device runs it (the
command line, time-sized epochs, archive parts and manifest in the output folder), then here:
parts checked and reassembled, runs published and their weights loaded through timm."""
import json
from pathlib import Path

import pytest
import timm
import torch
from conftest import GPU_ZOO_PART_SIZE, REPO
from safetensors.torch import load_file

from timm_frelu.fileio import file_sha256
from timm_frelu.gpu.zoo_job import (GpuZooError, load_plan, publish_returned, size_epochs, unpack_snapshot,
                                    write_snapshot)

# End to end: the job runs as a subprocess and trains. `pytest -m 'not slow'` leaves it out.
pytestmark = pytest.mark.slow

def test_job_leaves_a_manifest_and_parts_within_the_return_limits(gpu_zoo_returned):
    manifest = json.loads((gpu_zoo_returned / 'manifest.json').read_text())
    files = sorted(p.name for p in gpu_zoo_returned.iterdir())
    assert files == sorted(['manifest.json'] + [part['file'] for part in manifest['parts']])
    assert len(files) <= 8 and len(manifest['parts']) >= 2
    for part in manifest['parts']:
        assert (gpu_zoo_returned / part['file']).stat().st_size == part['bytes'] <= GPU_ZOO_PART_SIZE
        assert file_sha256(gpu_zoo_returned / part['file']) == part['sha256']
    frelu, relu = manifest['runs']
    assert frelu['status'] == relu['status'] == 'finished'
    # Epochs are sized from the measured speed; here the plan's maximum fits easily.
    assert (frelu['epochs_planned'], frelu['epochs_done'], relu['epochs_done']) == (2, 2, 1)
    assert frelu['calibration_img_per_sec'] > 0 and manifest['wall_s'] < 600


def test_returned_runs_are_verified_unpacked_and_published(gpu_zoo_returned, tmp_path):
    published = publish_returned(gpu_zoo_returned, tmp_path / 'unpacked', output_root=tmp_path / 'checkpoints',
                                 eval_datasets=['shared/cifar10-lossless'])
    assert [p.name for p in published] == ['resnet20_frelu.gpu_cifar10', 'resnet20_relu.gpu_cifar10']
    frelu = published[0]
    results = json.loads((frelu / 'results.json').read_text())
    assert results['weights_sha256'] == file_sha256(frelu / 'model.safetensors')
    assert results['source_epoch'] == 1 and results['evaluations'][0]['count'] == 1000
    # The published file holds the run's EMA weights, as exported on the device.
    exported = load_file(tmp_path / 'unpacked' / 'resnet20_frelu.gpu_cifar10' / 'model.safetensors')
    assert torch.equal(load_file(frelu / 'model.safetensors')['fc.weight'], exported['fc.weight'])
    model = timm.create_model('resnet20_frelu.cifar10', pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(frelu / 'model.safetensors'))).eval()
    assert torch.equal(model.fc.weight.half(), exported['fc.weight'])


def test_a_damaged_or_missing_part_is_refused(gpu_zoo_returned, tmp_path):
    copy = tmp_path / 'copy'
    copy.mkdir()
    for path in gpu_zoo_returned.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((copy / 'manifest.json').read_text())
    damaged = copy / manifest['parts'][1]['file']
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(GpuZooError, match=f"{damaged.name} has SHA256 .* the part is damaged"):
        unpack_snapshot(copy, tmp_path / 'unpacked')
    damaged.unlink()
    with pytest.raises(GpuZooError, match=f'{damaged.name} is missing'):
        unpack_snapshot(copy, tmp_path / 'unpacked')


def test_a_new_snapshot_replaces_the_old_only_once_complete(tmp_path):
    runs = tmp_path / 'runs'
    (runs / 'a').mkdir(parents=True)
    (runs / 'a' / 'x.bin').write_bytes(b'1' * 1000)
    out = tmp_path / 'out'
    write_snapshot(runs, out, dict(step=1), part_size=300)
    first = json.loads((out / 'manifest.json').read_text())
    (runs / 'a' / 'x.bin').write_bytes(b'2' * 700)
    write_snapshot(runs, out, dict(step=2), part_size=300)
    second = json.loads((out / 'manifest.json').read_text())
    assert second['serial'] == first['serial'] + 1
    assert sorted(p.name for p in out.iterdir()) == sorted(['manifest.json'] + [p['file'] for p in second['parts']])
    assert unpack_snapshot(out, tmp_path / 'unpacked')['step'] == 2
    assert (tmp_path / 'unpacked' / 'a' / 'x.bin').read_bytes() == b'2' * 700


def test_epochs_are_sized_to_the_time_given():
    # 50,000 images at 10,000 img/s: 5 s an epoch, plus 10,000 eval images at 30,000 img/s.
    assert size_epochs(600, 10_000, 50_000, 10_000, max_epochs=200, safety=1.0) == 112
    assert size_epochs(600, 10_000, 50_000, 10_000, max_epochs=30) == 30
    assert size_epochs(1, 10_000, 50_000, 10_000, max_epochs=30) == 1


def test_shipped_plans_name_training_arguments_only():
    from timm_frelu.gpu.zoo_job import train_args
    for path in sorted(REPO.glob('zoo_configs/gpu/plan-*.yaml')):
        plan = load_plan(path)
        for run in plan.runs:
            args = train_args(plan, run, Path('/tmp'), 'cuda')
            assert args.amp and args.channels_last and args.model == run.name.replace('.gpu_', '.'), path
