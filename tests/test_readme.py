from pathlib import Path

import pytest

from timm_frelu.cli import main
from timm_frelu.readme import replace_section
from timm_frelu.summary import MODEL_TABLE, model_table

README = Path(__file__).resolve().parents[1] / 'README.md'
# Both count params and MACs of all sixty models (about 15 s each). `pytest -m 'not slow'` leaves them out.
pytestmark = pytest.mark.slow


def test_readme_model_table_is_current():
    text = README.read_text()
    assert replace_section(text, MODEL_TABLE, model_table()) == text, (
        'README.md model table is stale: run `timm-frelu models --update-readme README.md`')


def test_models_command_prints_every_model(capsys):
    assert main(['models']) == 0
    out = capsys.readouterr().out
    for depth in (18, 20, 32, 34, 44, 50, 56, 101, 110, 152):
        assert f'| `resnet{depth}` |' in out
