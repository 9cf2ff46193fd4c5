"""Sweeps: an SQLite study that survives a kill, and two workers sharing one PostgreSQL study."""
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import kill_when, make_image_folder
from optuna.trial import TrialState

from timm_frelu.cli import main as cli_main
from timm_frelu.studies.sweep import load_sweep, run_sweep, write_report
from timm_frelu.training.train import parse_args

# End to end: training runs in subprocesses or in-process. `pytest -m 'not slow'` leaves them out.
pytestmark = pytest.mark.slow

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def sweep_main(argv):
    return cli_main(['sweep', *argv])


@pytest.fixture(scope='module')
def sweep_file(tmp_path_factory):
    root = tmp_path_factory.mktemp('sweep')
    data = make_image_folder(root / 'data', num_classes=3, per_class=8)
    spec = dict(
        study_name='tiny',
        args=dict(dataset='folder', data_dir=str(data), epochs=2, batch_size=12, threads=1, log_interval=100),
        params=dict(model=dict(type='categorical', choices=['resnet20_frelu', 'resnet20_relu']),
                    lr=dict(type='float', low=0.001, high=0.1, log=True)),
        objective=dict(metric='eval_top1', direction='maximize'),
        sampler='random', pruner='median', n_trials=3,
    )
    path = root / 'tiny.yaml'
    path.write_text(yaml.safe_dump(spec))
    return path


def _sweep_cmd(sweep_file, output, *extra):
    return [sys.executable, '-m', 'timm_frelu.cli', 'sweep', str(sweep_file), '--output', str(output), *extra]


def test_sqlite_sweep_report_and_best_config(sweep_file, tmp_path):
    spec = load_sweep(sweep_file)
    study = run_sweep(spec, tmp_path, seed=0)
    trials = study.get_trials(states=FINISHED)
    assert len(trials) == 3 and (tmp_path / 'tiny' / 'study.db').is_file()
    for t in trials:
        run = Path(t.user_attrs['run_dir'])
        assert (run / 'args.yaml').is_file() and (run / 'summary.csv').is_file()
    paths = write_report(study, spec, tmp_path)
    report = paths['report'].read_text()
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert f'| 1 | {best.number} | {best.value:.4f} |' in report
    assert all(f'| {t.number} |' in report and f'- trial {t.number}: `python -m timm_frelu.train ' in report for t in trials)
    for figure in ('history', 'importance', 'slices'):
        assert paths[figure].read_bytes().startswith(b'\x89PNG')
    best_args = parse_args(['-c', str(paths['best'])])
    assert best_args.model == best.params['model'] and best_args.lr == pytest.approx(best.params['lr'])


def test_a_resumed_seeded_sweep_does_not_replay_its_first_trials(sweep_file, tmp_path):
    spec = load_sweep(sweep_file)
    run_sweep(spec, tmp_path, n_trials=1, seed=0)
    study = run_sweep(spec, tmp_path, n_trials=2, seed=0)
    first, second = (t.params for t in study.get_trials(states=FINISHED))
    assert first != second


def test_killed_sweep_resumes_without_losing_finished_trials(sweep_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'tiny' / 'study.db'}"

    def finished_trials():
        try:
            return optuna.load_study(study_name='tiny', storage=storage).get_trials(states=FINISHED)
        except Exception:  # the study is not created yet
            return []

    kill_when(_sweep_cmd(sweep_file, tmp_path, '--n-trials', '4', '--seed', '1'), lambda: len(finished_trials()) >= 2)
    before = {t.number: t.value for t in optuna.load_study(study_name='tiny', storage=storage).get_trials(states=FINISHED)}
    assert len(before) >= 2
    result = subprocess.run(_sweep_cmd(sweep_file, tmp_path, '--n-trials', '4'), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    after = {t.number: t.value for t in optuna.load_study(study_name='tiny', storage=storage).get_trials(states=FINISHED)}
    assert len(after) == 4
    assert all(after[n] == v for n, v in before.items())
    assert 'Best configuration' in result.stdout
    left_running = optuna.load_study(study_name='tiny', storage=storage).get_trials(states=(TrialState.RUNNING,))
    report = (tmp_path / 'tiny' / 'report.md').read_text()
    assert (f'{len(left_running)} unfinished (' in report) == bool(left_running) and ' running' not in report


def test_two_studies_try_each_others_best_and_rank_them_jointly(sweep_file, tmp_path):
    # Two searches of one space on two models; the FReLU one has a choice the ReLU one calls otherwise.
    base = yaml.safe_load(sweep_file.read_text())
    files = {}
    for act, choices in (('relu', ['none', 'norm_bias']), ('frelu', ['none', 'norm_bias', 'norm_bias_funnel'])):
        spec = dict(base, study_name=f'pair-{act}', n_trials=2, args=dict(base['args'], model=f'resnet20_{act}'),
                    params=dict(lr=base['params']['lr'],
                                weight_decay_exclude=dict(type='categorical', choices=choices)))
        if act == 'relu':
            spec['aliases'] = {'weight_decay_exclude': {'norm_bias_funnel': 'norm_bias'}}
        files[act] = tmp_path / f'{act}.yaml'
        files[act].write_text(yaml.safe_dump(spec))
    for seed, act in enumerate(('relu', 'frelu')):
        assert sweep_main([str(files[act]), '--output', str(tmp_path), '--seed', str(seed)]) == 0
    for act, other in (('relu', 'frelu'), ('frelu', 'relu')):
        assert sweep_main([str(files[act]), '--output', str(tmp_path), '--enqueue-best-of', str(files[other]),
                           '--top', '1']) == 0
    studies = {act: optuna.load_study(study_name=f'pair-{act}', storage=f"sqlite:///{tmp_path / f'pair-{act}' / 'study.db'}")
               for act in files}
    for act, other in (('relu', 'frelu'), ('frelu', 'relu')):
        queued = [t for t in studies[act].get_trials() if 'enqueued_from' in t.user_attrs]
        assert len(queued) == 1 and queued[0].state in FINISHED  # the queued trial ran beyond the budget of 2
        source_study, _, number = queued[0].user_attrs['enqueued_from'].rpartition(' trial ')
        source = studies[other].trials[int(number)]
        assert source_study == f'pair-{other}' and source.state == TrialState.COMPLETE
        assert queued[0].params['lr'] == source.params['lr']
    assert sweep_main([str(files['relu']), '--output', str(tmp_path), '--report-only', '--joint', str(files['frelu'])]) == 0
    joint = (tmp_path / 'pair-relu' / 'joint-pair-frelu.md').read_text()
    rows = [line for line in joint.splitlines() if line.startswith('| 1 ') or line.startswith('| 2 ')]
    assert rows, joint
    means = [float(row.split('|')[2]) for row in rows]
    assert means == sorted(means, reverse=True)


def test_enqueue_names_the_alias_a_value_outside_the_space_needs(sweep_file, tmp_path, capsys):
    base = yaml.safe_load(sweep_file.read_text())
    files = {}
    for act, choices in (('relu', ['none', 'norm_bias']), ('frelu', ['norm_bias_funnel'])):
        spec = dict(base, study_name=f'strict-{act}', n_trials=1, args=dict(base['args'], model=f'resnet20_{act}'),
                    params=dict(weight_decay_exclude=dict(type='categorical', choices=choices)))
        files[act] = tmp_path / f'{act}.yaml'
        files[act].write_text(yaml.safe_dump(spec))
    assert sweep_main([str(files['frelu']), '--output', str(tmp_path)]) == 0
    capsys.readouterr()
    assert sweep_main([str(files['relu']), '--output', str(tmp_path), '--enqueue-best-of', str(files['frelu'])]) == 2
    assert "aliases: {weight_decay_exclude: {'norm_bias_funnel': ...}}" in capsys.readouterr().err


def test_two_workers_share_one_postgresql_study(sweep_file, postgres, tmp_path):
    cmd = _sweep_cmd(sweep_file, tmp_path, '--storage', postgres, '--n-trials', '4')
    # Create the study once, so the two workers do not race to create it.
    optuna.create_study(study_name='tiny', storage=postgres, direction='maximize')
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name='tiny', storage=postgres).get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    assert 4 <= len(finished) <= 5  # a worker stops once 4 have finished; one may be mid-trial then
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers)
    by_worker = {}
    for t in finished:
        by_worker.setdefault(t.user_attrs['worker'], []).append(t.number)
    assert len(by_worker) == 2 and sum(len(v) for v in by_worker.values()) == len(finished)
    run_dirs = [t.user_attrs['run_dir'] for t in finished]
    assert len(set(run_dirs)) == len(run_dirs) and all((Path(d) / 'summary.csv').is_file() for d in run_dirs)


def test_a_diverging_configuration_stops_its_trial_not_the_sweep(sweep_file, tmp_path):
    base = yaml.safe_load(sweep_file.read_text())
    files = {}
    for act in ('relu', 'frelu'):
        spec = dict(base, study_name=f'diverge-{act}', sampler='grid', n_trials=2,
                    args=dict(base['args'], model=f'resnet20_{act}', epochs=3),
                    params=dict(lr=dict(type='categorical', choices=[0.01, 1e12])))
        files[act] = tmp_path / f'{act}.yaml'
        files[act].write_text(yaml.safe_dump(spec))
        assert sweep_main([str(files[act]), '--output', str(tmp_path), '--seed', '0']) == 0
        study = optuna.load_study(study_name=f'diverge-{act}', storage=f"sqlite:///{tmp_path / f'diverge-{act}' / 'study.db'}")
        diverged = [t for t in study.trials if t.params['lr'] == 1e12]
        assert [t.state for t in diverged] == [TrialState.PRUNED] and 'loss became' in diverged[0].user_attrs['diverged']
        report = (tmp_path / f'diverge-{act}' / 'report.md').read_text()
        assert f"| - | {diverged[0].number} | {diverged[0].user_attrs['diverged']} |" in report
    assert sweep_main([str(files['relu']), '--output', str(tmp_path), '--report-only', '--joint', str(files['frelu'])]) == 0
    joint = (tmp_path / 'diverge-relu' / 'joint-diverge-frelu.md').read_text()
    assert joint.count('| 1 | ') == 1 and 'not completed by both' in joint and joint.count('loss became') == 2


def test_a_trial_that_ran_every_epoch_is_never_pruned(sweep_file, tmp_path):
    base = yaml.safe_load(sweep_file.read_text())
    # The loss differs from trial to trial where top-1 on a few images ties, so the pruner has work.
    spec = dict(base, study_name='eager-pruner', n_trials=4, args=dict(base['args'], epochs=1),
                objective=dict(metric='eval_loss', direction='minimize'), pruner_args=dict(n_startup_trials=0, n_warmup_steps=0))
    study = run_sweep(spec, tmp_path, seed=0)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
