from pathlib import Path

import pytest
import timm

from timm_frelu.recipes import recipes, render
from timm_frelu.train import parse_args

ROOT = Path(__file__).resolve().parents[1] / 'zoo_configs'
RECIPES = list(recipes())


@pytest.mark.parametrize('rel, note, args', RECIPES, ids=[r[0] for r in RECIPES])
def test_recipe_file_is_current_and_parses(rel, note, args):
    path = ROOT / rel
    assert path.read_text() == render(note, args), f'{rel} is stale: run `timm-frelu recipes --write zoo_configs`'
    parsed = parse_args(['-c', str(path)])
    assert timm.is_model(parsed.model.split('.')[0]) and parsed.num_classes in (10, 100)


def test_study_recipe_is_the_published_one():
    args = parse_args(['-c', str(ROOT / 'study' / 'resnet18_frelu_cifar10.yaml')])
    assert (args.epochs, args.opt, args.momentum, args.lr, args.weight_decay, args.batch_size) == (200, 'momentum', 0.9, 0.1, 5e-4, 128)
    assert (args.sched, args.decay_milestones, args.decay_rate) == ('multistep', [100, 150], 0.1)
