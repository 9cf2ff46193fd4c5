from pathlib import Path

import pytest
from conftest import REPO

from timm_frelu.cli import main
from timm_frelu.publishing.readme import replace_section
from timm_frelu.studies.summary import MODEL_TABLE, WEIGHTS_TABLE, weights_table
from timm_frelu.training.queue import load_queue, queue_output, readme_section, readme_section_name

README = REPO / 'README.md'
MODELS_DOC = REPO / 'docs' / 'models.md'


def test_the_readmes_weights_table_is_current_and_lists_every_published_weight():
    text = README.read_text()
    assert replace_section(text, WEIGHTS_TABLE, weights_table()) == text, (
        'README.md weights table is stale: run `timm-frelu weights --update-readme README.md`')
    from timm_frelu.pretrained import published_weights
    assert all(f"`'{w.name_tag}'`" in text for w in published_weights())


def test_the_readmes_list_of_the_study_queue_is_current(monkeypatch):
    monkeypatch.chdir(REPO)  # the queue's paths are the checkout's
    queue = Path('zoo_configs/queues/cpu_study_cifar10.yaml')
    spec = load_queue(queue)
    text = README.read_text()
    assert replace_section(text, readme_section_name(queue), readme_section(spec, queue_output(spec))) == text, (
        f'README.md list of the study queue is stale: run `timm-frelu train-queue {queue} --update-readme README.md`')


def test_the_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300
    headings = [line for line in lines if line.startswith('## ')]
    assert headings[:3] == ['## Install', '## Quick start', '## Pretrained weights']
    first_code = next(i for i, line in enumerate(lines) if line.startswith('```python'))
    assert first_code < 45  # the first code within the first screen
    for link in ('docs/models.md', 'docs/results.md', 'docs/training.md', 'docs/performance.md',
                 'docs/reliability.md', 'docs/code-map.md'):
        assert f']({link}' in README.read_text() and (REPO / link).is_file(), link


@pytest.mark.slow  # counts params and MACs of all sixty models, once for both checks
def test_models_command_prints_every_model_and_the_model_table_is_current(capsys):
    assert main(['models']) == 0
    printed = capsys.readouterr().out
    for depth in (18, 20, 32, 34, 44, 50, 56, 101, 110, 152):
        assert f'| `resnet{depth}` |' in printed
    text = MODELS_DOC.read_text()
    assert replace_section(text, MODEL_TABLE, printed.rstrip('\n')) == text, (
        'docs/models.md model table is stale: run `timm-frelu models --update-readme docs/models.md`')
