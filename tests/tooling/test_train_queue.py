"""The training queue: killed and run again it goes on, and two workers share it."""
import csv
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import kill_when, make_image_folder

from timm_frelu.cli import main as cli_main
from timm_frelu.training.queue import run_lock, run_state
from timm_frelu.training.run_folder import recovery_checkpoints

# End to end: training runs in subprocesses. `pytest -m 'not slow'` leaves them out.
pytestmark = pytest.mark.slow

EPOCHS = 3


@pytest.fixture
def queue_file(tmp_path):
    data = make_image_folder(tmp_path / 'data', num_classes=3, per_class=8)
    spec = dict(
        output=str(tmp_path / 'runs'),
        defaults=dict(dataset='folder', data_dir=str(data), epochs=EPOCHS, batch_size=12, threads=1, log_interval=100),
        runs=[dict(experiment='first', args=dict(model='resnet20_relu', seed=0)),
              dict(experiment='second', args=dict(model='resnet20_frelu', seed=1))],
    )
    path = tmp_path / 'queue.yaml'
    path.write_text(yaml.safe_dump(spec))
    return path


def _queue_cmd(queue_file):
    return [sys.executable, '-m', 'timm_frelu.cli', 'train-queue', str(queue_file)]


def _epochs(run_dir):
    with open(run_dir / 'summary.csv') as f:
        return [int(row['epoch']) for row in csv.DictReader(f)]


def test_a_killed_queue_run_again_finishes_without_redoing_a_run(queue_file, tmp_path):
    runs = tmp_path / 'runs'
    kill_when(_queue_cmd(queue_file), lambda: (runs / 'second' / 'last.pth.tar').is_file(), timeout=600)
    assert _epochs(runs / 'first') == list(range(EPOCHS))
    first_done = (runs / 'first' / 'last.pth.tar').stat().st_mtime_ns
    result = subprocess.run(_queue_cmd(queue_file), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'first: done' in result.stdout and 'second: done' in result.stdout
    assert (runs / 'first' / 'last.pth.tar').stat().st_mtime_ns == first_done
    # Resumed, not restarted: every epoch once.
    assert _epochs(runs / 'second') == list(range(EPOCHS))


def test_a_queue_run_cut_short_within_an_epoch_goes_on_from_its_recovery_checkpoint(queue_file, tmp_path):
    runs = tmp_path / 'runs'
    spec = yaml.safe_load(queue_file.read_text())
    spec['runs'] = spec['runs'][1:]
    spec['defaults'].update(batch_size=4, recovery_interval=1)  # 6 batches an epoch, a recovery checkpoint after each
    queue_file.write_text(yaml.safe_dump(spec))
    # Killed early in epoch 1, with batches to spare before its end would remove the recovery checkpoints.
    kill_when(_queue_cmd(queue_file), lambda: any(epoch == 1 and batches <= 2 for epoch, batches, _ in
                                                  recovery_checkpoints(runs / 'second')), timeout=600)
    epoch, batches, _ = recovery_checkpoints(runs / 'second')[-1]
    assert run_state(runs / 'second', EPOCHS) == 'resume'
    result = subprocess.run(_queue_cmd(queue_file), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'from epoch {epoch}, batch {batches + 1} of 6' in result.stderr
    assert _epochs(runs / 'second') == list(range(EPOCHS)) and recovery_checkpoints(runs / 'second') == []


def test_two_workers_share_a_queue_and_train_each_run_once(queue_file, tmp_path):
    workers = [subprocess.Popen(_queue_cmd(queue_file), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
        outputs.append(out)
    for name in ('first', 'second'):
        assert _epochs(tmp_path / 'runs' / name) == list(range(EPOCHS))
    # Each worker either trained a run or saw it taken: both runs are done or taken in each report.
    assert all(f'{name}: ' in out for out in outputs for name in ('first', 'second'))


@pytest.mark.parametrize('runs, message', [
    ([], 'has no runs'),
    ([{'args': {'seed': 0}}], 'needs an experiment name'),
    ([{'experiment': 'a'}, {'experiment': 'a'}], 'experiment names repeat'),
    ([{'experiment': 'a', 'args': {'epochs': 0}}], 'run a:'),
])
def test_a_bad_queue_file_is_a_clear_error(tmp_path, capsys, runs, message):
    path = tmp_path / 'queue.yaml'
    path.write_text(yaml.safe_dump(dict(output=str(tmp_path / 'runs'), runs=runs)))
    assert cli_main(['train-queue', str(path)]) == 2
    assert message in capsys.readouterr().err


def test_a_snapshot_carries_an_unfinished_run_to_a_fresh_machine(queue_file, tmp_path):
    runs, keep = tmp_path / 'runs', tmp_path / 'in-progress'
    kill_when(_queue_cmd(queue_file), lambda: (runs / 'second' / 'last.pth.tar').is_file(), timeout=600)
    assert cli_main(['train-queue', str(queue_file), '--snapshot', str(keep)]) == 0
    # Only the unfinished run is kept, and only what resuming needs.
    assert sorted(p.name for p in keep.iterdir()) == ['second']
    assert sorted(p.name for p in (keep / 'second').iterdir()) == ['args.yaml', 'last.pth.tar', 'summary.csv']

    # A fresh machine: no run folders; the finished run is known by its published summary.
    published = tmp_path / 'checkpoints' / 'first'
    published.mkdir(parents=True)
    (published / 'summary.csv').write_bytes((runs / 'first' / 'summary.csv').read_bytes())
    shutil.rmtree(runs)
    spec = yaml.safe_load(queue_file.read_text())
    spec['runs'][0]['published'] = str(published)
    queue_file.write_text(yaml.safe_dump(spec))

    result = subprocess.run(_queue_cmd(queue_file) + ['--restore', str(keep)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'second: restored, ' in result.stdout
    assert not (runs / 'first').exists()
    assert _epochs(runs / 'second') == list(range(EPOCHS))

    assert cli_main(['train-queue', str(queue_file), '--snapshot', str(keep)]) == 0
    assert not (keep / 'second').exists()


def test_a_missing_published_folder_is_a_clear_error(tmp_path, capsys, monkeypatch):
    path = tmp_path / 'queue.yaml'
    path.write_text(yaml.safe_dump(dict(output='runs', runs=[{'experiment': 'a', 'published': 'nowhere'}])))
    monkeypatch.chdir(tmp_path)
    assert cli_main(['train-queue', str(path)]) == 2
    error = capsys.readouterr().err
    assert 'publish the run first' in error
    assert f'looked in {tmp_path}' in error  # queue paths are relative to the cwd: a wrong cwd is the usual cause


def test_a_snapshot_names_a_finished_run_that_a_fresh_checkout_would_train_again(queue_file, tmp_path, capsys):
    spec = yaml.safe_load(queue_file.read_text())
    epochs = spec['defaults']['epochs']
    for run in spec['runs']:
        run_dir = tmp_path / 'runs' / run['experiment']
        run_dir.mkdir(parents=True)
        (run_dir / 'summary.csv').write_text('epoch,eval_top1\n' + ''.join(f'{e},50\n' for e in range(epochs)))
    published = tmp_path / 'checkpoints' / 'second'
    shutil.copytree(tmp_path / 'runs' / 'second', published)
    spec['runs'][1]['published'] = str(published)
    queue_file.write_text(yaml.safe_dump(spec))

    assert cli_main(['train-queue', str(queue_file), '--snapshot', str(tmp_path / 'in-progress')]) == 0
    out = capsys.readouterr().out
    assert 'first: finished, but its queue entry has no published: folder' in out
    assert 'timm-frelu publish ' in out and '--name resnet20_relu.<tag>' in out
    assert 'second:' not in out


def test_status_says_what_is_published_and_what_is_training_without_training(queue_file, tmp_path, capsys):
    published = _publish_first_run_with_an_unfinished_copy(queue_file, tmp_path, tmp_path / 'elsewhere')
    spec = yaml.safe_load(queue_file.read_text())
    spec['runs'] += [dict(experiment='second', args=dict(model='resnet20_frelu', seed=1)),
                     dict(experiment='third', args=dict(model='resnet20_frelu', seed=2))]
    queue_file.write_text(yaml.safe_dump(spec))
    runs = tmp_path / 'runs'
    shutil.copytree(tmp_path / 'elsewhere', runs / 'second')

    assert cli_main(['train-queue', str(queue_file), '--status']) == 0
    assert capsys.readouterr().out.splitlines() == [
        f'first: published in {published}',
        f'second: 1 of {EPOCHS} epochs done in {runs / "second"}, not training now: run the queue to go on',
        'third: not started']
    with run_lock(runs, 'second'):  # a worker training it
        assert cli_main(['train-queue', str(queue_file), '--status']) == 0
    assert f'second: 1 of {EPOCHS} epochs done in {runs / "second"}, training now' in capsys.readouterr().out
    assert (runs / 'second' / 'last.pth.tar').read_bytes() == b'stopped after epoch 0'
    assert not (runs / 'third').exists()


def test_the_readme_lists_the_published_runs_then_the_rest_in_order_without_training(queue_file, tmp_path, capsys,
                                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the publish entry's checkpoints/ folder is
    _publish_first_run_with_an_unfinished_copy(queue_file, tmp_path, tmp_path / 'elsewhere')
    spec = yaml.safe_load(queue_file.read_text())
    spec['runs'].append(dict(experiment='second', args=dict(model='resnet20_frelu', seed=1),
                             publish=dict(name='resnet20_frelu.q3_cifar10')))
    queue_file.write_text(yaml.safe_dump(spec))
    readme = tmp_path / 'README.md'
    readme.write_text('# Zoo\n<!-- queue-runs:start -->\n<!-- queue-runs:end -->\nMore.\n')

    assert cli_main(['train-queue', str(queue_file), '--update-readme', str(readme)]) == 0
    assert readme.read_text().splitlines()[2:4] == [
        '- Published: `first`.', '- Not yet published, in the order the queue trains them: `resnet20_frelu.q3_cifar10`.']
    shutil.copytree(tmp_path / 'checkpoints' / 'first', tmp_path / 'checkpoints' / 'resnet20_frelu.q3_cifar10')
    assert cli_main(['train-queue', str(queue_file), '--update-readme', str(readme)]) == 0
    assert readme.read_text() == ('# Zoo\n<!-- queue-runs:start -->\n- Published: `first`, `resnet20_frelu.q3_cifar10`.\n'
                                  '- All 2 runs are published.\n<!-- queue-runs:end -->\nMore.\n')
    assert not (tmp_path / 'runs').exists()
    capsys.readouterr()
    # A README without the markers says where they go, and is left as it was.
    (tmp_path / 'OTHER.md').write_text('# Other\n')
    assert cli_main(['train-queue', str(queue_file), '--update-readme', str(tmp_path / 'OTHER.md')]) == 2
    assert '<!-- queue-runs:start -->' in capsys.readouterr().err and (tmp_path / 'OTHER.md').read_text() == '# Other\n'


def _publish_first_run_with_an_unfinished_copy(queue_file, tmp_path, unfinished):
    """Queue only the first run, published with every epoch; ``unfinished`` holds an older copy of
    it that stopped after epoch 0 (a snapshot, or a run folder on this machine)."""
    spec = yaml.safe_load(queue_file.read_text())
    summary = 'epoch,eval_top1\n' + ''.join(f'{e},50\n' for e in range(spec['defaults']['epochs']))
    published = tmp_path / 'checkpoints' / 'first'
    published.mkdir(parents=True)
    (published / 'summary.csv').write_text(summary)
    unfinished.mkdir(parents=True)
    (unfinished / 'summary.csv').write_text(summary.splitlines()[0] + '\n0,50\n')
    (unfinished / 'args.yaml').write_text('{}')
    (unfinished / 'last.pth.tar').write_bytes(b'stopped after epoch 0')
    spec['runs'] = [dict(spec['runs'][0], published=str(published))]
    queue_file.write_text(yaml.safe_dump(spec))
    return published


def test_a_stale_snapshot_of_a_published_run_is_not_restored(queue_file, tmp_path, capsys):
    published = _publish_first_run_with_an_unfinished_copy(queue_file, tmp_path, tmp_path / 'in-progress' / 'first')
    assert cli_main(['train-queue', str(queue_file), '--restore', str(tmp_path / 'in-progress')]) == 0
    assert f'first: not restored: published in {published}' in capsys.readouterr().out
    assert not (tmp_path / 'runs' / 'first').exists()


def test_a_published_run_is_not_trained_again_from_an_older_run_folder(queue_file, tmp_path, capsys):
    older = tmp_path / 'runs' / 'first'
    _publish_first_run_with_an_unfinished_copy(queue_file, tmp_path, older)
    assert cli_main(['train-queue', str(queue_file)]) == 0
    assert 'first: done' in capsys.readouterr().out
    assert (older / 'last.pth.tar').read_bytes() == b'stopped after epoch 0'


def test_a_run_with_a_publish_entry_is_published_by_the_queue_when_it_finishes(tmp_path, capsys):
    """The queue records a finished run itself: no hand-added published: entry, which once slipped
    and would have had a fresh checkout train the run again."""
    data = make_image_folder(tmp_path / 'data', num_classes=10, per_class=3)
    record = tmp_path / 'records' / 'only'
    spec = dict(output=str(tmp_path / 'runs'),
                defaults=dict(dataset='folder', data_dir=str(data), epochs=1, batch_size=10, threads=1),
                runs=[dict(experiment='only', args=dict(model='resnet20_relu', seed=0),
                           publish=dict(name='resnet20_relu.test_cifar10', into=str(record), card=False,
                                        eval_datasets=['folder']))])
    queue = tmp_path / 'queue.yaml'
    queue.write_text(yaml.safe_dump(spec))
    assert cli_main(['train-queue', str(queue)]) == 0
    published = record / 'resnet20_relu.test_cifar10'
    assert f'only: done, published in {published}' in capsys.readouterr().out
    assert {'model.safetensors', 'results.json', 'summary.csv', 'config.json'} <= {p.name for p in published.iterdir()}
    assert 'README.md' not in {p.name for p in published.iterdir()}
    written = (published / 'results.json').stat().st_mtime_ns
    # A fresh checkout: no run folders, the record alone says the run is done; nothing is trained or published again.
    shutil.rmtree(tmp_path / 'runs')
    assert cli_main(['train-queue', str(queue)]) == 0
    assert 'only: done\n' in capsys.readouterr().out
    assert not (tmp_path / 'runs' / 'only').exists() and (published / 'results.json').stat().st_mtime_ns == written


def test_a_bad_publish_entry_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / 'queue.yaml'
    path.write_text(yaml.safe_dump(dict(output='runs', runs=[{'experiment': 'a', 'publish': 'resnet20_relu.x_cifar10'}])))
    assert cli_main(['train-queue', str(path)]) == 2
    assert 'publish must be a mapping with a name' in capsys.readouterr().err


def test_a_run_continues_on_a_fresh_machine_from_its_lean_snapshot(queue_file, tmp_path):
    runs, keep = tmp_path / 'runs', tmp_path / 'in-progress'
    spec = yaml.safe_load(queue_file.read_text())
    spec['runs'] = spec['runs'][1:]  # the FReLU run alone, long enough to be killed midway
    epochs = spec['defaults']['epochs'] = 12
    queue_file.write_text(yaml.safe_dump(spec))
    kill_when(_queue_cmd(queue_file), lambda: (runs / 'second' / 'summary.csv').is_file()
              and len(_epochs(runs / 'second')) >= 5, timeout=600)
    result = subprocess.run(_queue_cmd(queue_file) + ['--snapshot', str(keep), '--lean'], capture_output=True, text=True,
                            timeout=600)
    kept = re.search(rf'second: lean snapshot kept, (\d+) of {epochs} epochs done', result.stdout)
    assert kept, result.stdout + result.stderr
    done = int(kept.group(1))  # the last checkpoint's epochs: the summary may be one ahead of it
    assert 4 <= done < epochs
    shutil.rmtree(runs)  # a fresh machine
    result = subprocess.run(_queue_cmd(queue_file) + ['--restore', str(keep)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'second: restored from its lean snapshot, {done} epochs done' in result.stdout
    assert f'continuing from its restored weights at epoch {done}' in result.stderr
    assert _epochs(runs / 'second') == list(range(epochs))
    args = yaml.safe_load((runs / 'second' / 'args.yaml').read_text())
    assert args['start_epoch'] == done and [s['from_epoch'] for s in args['precision_history']] == [0]
    assert args['restarts'] == [dict(epoch=done, weights='restart.safetensors')]
