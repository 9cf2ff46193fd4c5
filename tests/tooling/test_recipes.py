from pathlib import Path

import optuna
import pytest
import yaml
from conftest import REPO

from timm_frelu.models.registry import check_model_name
from timm_frelu.studies.sweep import joint_ranking, load_sweep, trial_args
from timm_frelu.training.recipes import TUNED_CHOICE, TUNED_PROXY_EPOCHS, recipes, render
from timm_frelu.training.train import parse_args

ROOT = REPO / 'zoo_configs'
RECIPES = list(recipes())


@pytest.mark.parametrize('rel, note, args', RECIPES, ids=[r[0] for r in RECIPES])
def test_recipe_file_is_current_and_parses(rel, note, args):
    path = ROOT / rel
    assert path.read_text() == render(note, args), f'{rel} is stale: run `timm-frelu recipes --write zoo_configs`'
    parsed = parse_args(['-c', str(path)])
    check_model_name(parsed.model)
    assert parsed.num_classes in (10, 100)


def test_study_recipe_is_the_published_one():
    args = parse_args(['-c', str(ROOT / 'study' / 'resnet18_frelu_cifar10.yaml')])
    assert (args.epochs, args.opt, args.momentum, args.lr, args.weight_decay, args.batch_size) == (200, 'momentum', 0.9, 0.1, 5e-4, 128)
    assert (args.sched, args.decay_milestones, args.decay_rate) == ('multistep', [100, 150], 0.1)


STUDY_RECORDS = REPO / 'docs' / 'recipe-study'
# What a run's place and data say, not how it trains.
RUN_PLACE = {'dataset', 'train_split', 'val_split', 'threads', 'log_interval', 'output', 'experiment', 'config', 'model',
             'num_classes'}


def _study(act):
    spec = load_sweep(ROOT / 'sweeps' / f'recipe_study_resnet20_{act}.yaml')
    storage = f"sqlite:///{STUDY_RECORDS / spec['study_name'] / 'study.db'}"
    return spec, optuna.load_study(study_name=spec['study_name'], storage=storage)


def test_tuned_recipe_is_the_recipe_studys_joint_best_and_trains_like_its_trials(tmp_path):
    (relu_spec, relu), (frelu_spec, frelu) = _study('relu'), _study('frelu')
    best = joint_ranking(relu, relu_spec, frelu, frelu_spec)[0]
    assert best['params'] == TUNED_CHOICE
    for act, spec, number in (('relu', relu_spec, best['trials'][0]), ('frelu', frelu_spec, best['trials'][1])):
        trial = vars(trial_args(spec, TUNED_CHOICE, tmp_path, number))
        recipe = vars(parse_args(['-c', str(ROOT / 'cpu' / 'tuned30' / f'resnet20_{act}_cifar10.yaml'),
                                  '--epochs', str(TUNED_PROXY_EPOCHS), '--warmup-epochs', str(TUNED_CHOICE['warmup_epochs'])]))
        assert {k for k in trial if trial[k] != recipe.get(k)} <= RUN_PLACE, act
        assert recipe['model'].startswith(f'resnet20_{act}')


def test_tuned_recipe_stretches_the_schedule_keeping_its_shape():
    short, long = (parse_args(['-c', str(ROOT / 'cpu' / f'tuned{n}' / 'resnet20_frelu_cifar10.yaml')]) for n in (30, 200))
    assert (short.epochs, long.epochs) == (30, 200)
    assert short.warmup_epochs / short.epochs == long.warmup_epochs / long.epochs == TUNED_CHOICE['warmup_epochs'] / TUNED_PROXY_EPOCHS
    assert (short.lr_base, short.batch_size, short.model_ema_decay) == (long.lr_base, long.batch_size, long.model_ema_decay)


def test_rank_check_queue_runs_the_studies_trials_at_the_full_budget():
    queue = yaml.safe_load((ROOT / 'queues' / 'recipe_study_rank_check.yaml').read_text())
    studies = {act: _study(act) for act in ('relu', 'frelu')}
    for run in queue['runs']:
        act = run['experiment'].removeprefix('rank-check-resnet20_').split('-trial')[0]
        spec, study = studies[act]
        assert load_sweep(ROOT.parent / run['sweep'])['study_name'] == spec['study_name']
        params = study.trials[run['trial']].params
        assert run['args']['epochs'] == 30 and run['args']['warmup_epochs'] == params['warmup_epochs'] * 3
        assert all(run['args'][k] == v for k, v in params.items() if k != 'warmup_epochs'), run['experiment']
