"""Rank check: a sweep's proxy ranking beside its trials trained again at full length."""
import csv
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import REPO
from optuna.distributions import FloatDistribution

from timm_frelu.cli import main as cli_main
from timm_frelu.studies.sweep import default_storage, load_sweep

FULL_EPOCHS = 3


def rank_check_main(argv):
    return cli_main(['rank-check', *argv])


def _write_summary(run_dir: Path, top1_by_epoch):
    run_dir.mkdir(parents=True)
    with open(run_dir / 'summary.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=['epoch', 'train_loss', 'eval_loss', 'eval_top1'])
        writer.writeheader()
        for epoch, top1 in enumerate(top1_by_epoch):
            writer.writerow(dict(epoch=epoch, train_loss=1.0, eval_loss=1.0, eval_top1=top1))


@pytest.fixture
def setup(tmp_path):
    """A stored study of three completed 2-epoch trials (proxy 80, 70, 60) and a queue that trains
    them again for 3 epochs."""
    sweep = tmp_path / 'tiny.yaml'
    sweep.write_text(yaml.safe_dump(dict(study_name='tiny', params=dict(lr=dict(type='float', low=0.01, high=1.0)),
                                         objective=dict(metric='eval_top1', direction='maximize'))))
    spec = load_sweep(sweep)
    (tmp_path / 'studies' / 'tiny').mkdir(parents=True)
    study = optuna.create_study(study_name='tiny', storage=default_storage(spec, tmp_path / 'studies'), direction='maximize')
    for lr, proxy in ((0.1, 80.0), (0.3, 70.0), (0.9, 60.0)):
        study.add_trial(optuna.trial.create_trial(params=dict(lr=lr), distributions=dict(lr=FloatDistribution(0.01, 1.0)),
                                                  value=proxy, intermediate_values={0: proxy - 10, 1: proxy}))
    runs = [dict(experiment=f'full-trial{n}', sweep=str(sweep), trial=n, args=dict(lr=lr, epochs=FULL_EPOCHS))
            for n, lr in ((0, 0.1), (1, 0.3), (2, 0.9))]
    queue = tmp_path / 'queue.yaml'
    queue.write_text(yaml.safe_dump(dict(output=str(tmp_path / 'runs'), runs=runs)))
    return tmp_path, queue


def _check(tmp_path, queue, capsys, *extra):
    code = rank_check_main([str(queue), '--studies', str(tmp_path / 'studies'), *extra])
    return code, capsys.readouterr()


def test_orders_agree_and_an_unfinished_run_is_left_out_of_the_ranks(setup, capsys):
    tmp_path, queue = setup
    _write_summary(tmp_path / 'runs' / 'full-trial0', [50, 70, 90])
    _write_summary(tmp_path / 'runs' / 'full-trial1', [50, 70, 85])
    _write_summary(tmp_path / 'runs' / 'full-trial2', [40])
    code, out = _check(tmp_path, queue, capsys, '--output', str(tmp_path / 'check.md'))
    assert code == 0
    assert '| trial | proxy (2 epochs) | rank | 3 epochs | rank |' in out.out
    assert '| 0 | 80.00 | 1 | 90.00 | 1 |' in out.out and '| 1 | 70.00 | 2 | 85.00 | 2 |' in out.out
    assert '| 2 | 60.00 | - | unfinished: 40.00 after 1 of 3 | - |' in out.out
    assert 'The 2-epoch proxy orders these trials as 3 epochs do.' in out.out
    assert (tmp_path / 'check.md').read_text() == out.out


def test_orders_that_differ_are_said_to_differ(setup, capsys):
    tmp_path, queue = setup
    _write_summary(tmp_path / 'runs' / 'full-trial0', [50, 70, 84])
    _write_summary(tmp_path / 'runs' / 'full-trial1', [50, 70, 85])
    code, out = _check(tmp_path, queue, capsys)
    assert code == 0
    assert '| 0 | 80.00 | 1 | 84.00 | 2 |' in out.out and '| 2 | 60.00 | - | no results yet | - |' in out.out
    assert 'orders these trials differently from 3 epochs' in out.out


def test_missing_study_and_a_run_without_its_trial_are_named(setup, capsys):
    tmp_path, queue = setup
    code, out = rank_check_main([str(queue), '--studies', str(tmp_path / 'elsewhere')]), capsys.readouterr()
    assert code == 2 and 'pass --studies' in out.err and not (tmp_path / 'elsewhere').exists()
    spec = yaml.safe_load(queue.read_text())
    del spec['runs'][1]['trial']
    queue.write_text(yaml.safe_dump(spec))
    code, out = _check(tmp_path, queue, capsys)
    assert code == 2 and 'full-trial1' in out.err and 'sweep file and trial number' in out.err


def test_the_recipe_studys_rank_check_record_is_current(monkeypatch, capsys):
    """docs/recipe-study/rank-check/README.md is the command's output on the stored runs, as its first lines say."""
    record = REPO / 'docs' / 'recipe-study' / 'rank-check' / 'README.md'
    command = next(line for line in record.read_text().splitlines() if line.startswith('Written by `'))
    argv = command.removeprefix('Written by `').removesuffix('`.').split()[2:]
    monkeypatch.chdir(REPO)
    assert rank_check_main(argv) == 0
    assert capsys.readouterr().out == record.read_text()
