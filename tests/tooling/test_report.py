"""The comparison report and the FReLU pictures, on real (tiny) training runs and eval results."""
import csv
import json
import statistics

import pytest
from conftest import make_image_folder
from scipy import stats

from timm_frelu.cli import main as cli_main
from timm_frelu.training.train import parse_args, train
from timm_frelu.validate import main as validate_main

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def results_files(tmp_path_factory):
    root = tmp_path_factory.mktemp('report')
    data = make_image_folder(root / 'data', num_classes=4, per_class=8)
    files = []
    for act in ('frelu', 'relu'):
        for seed in (0, 1):
            run = train(parse_args([
                '--dataset', 'folder', '--data-dir', str(data), '--model', f'resnet20_{act}', '--epochs', '2',
                '--batch-size', '16', '--seed', str(seed), '--threads', '1', '--output', str(root / 'runs'),
                '--experiment', f'{act}-{seed}']))
            results = root / f'{act}-{seed}.json'
            assert validate_main(['--model', f'resnet20_{act}', '--num-classes', '4', '--checkpoint',
                                  str(run / 'last.pth.tar'), '--dataset', 'folder', '--data-dir', str(data),
                                  '--results-file', str(results)]) == 0
            files.append(results)
    return files


def test_report_cells_are_the_mean_and_std_of_their_results_files(results_files, tmp_path):
    out = tmp_path / 'report'
    assert cli_main(['report', *map(str, results_files), '--output', str(out)]) == 0
    with open(out / 'report.csv') as f:
        rows = {row['act']: row for row in csv.DictReader(f)}
    assert set(rows) == {'frelu', 'relu'}
    for act, row in rows.items():
        files = [p for p in results_files if p.name.startswith(act)]
        top1 = [json.loads(p.read_text())['top1'] for p in files]
        assert float(row['top1_mean']) == pytest.approx(statistics.fmean(top1))
        assert float(row['top1_std']) == pytest.approx(statistics.stdev(top1))
        assert row['n'] == '2' and row['seeds'] == '0 1'
        assert set(row['results_files'].split()) == {str(p) for p in files}
        assert float(row['train_img_per_sec']) > 0 and float(row['infer_img_per_sec']) > 0
    assert float(rows['frelu']['params_m']) > float(rows['relu']['params_m'])
    text = (out / 'report.md').read_text()
    frelu = rows['frelu']
    assert f"{float(frelu['top1_mean']):.2f} ± {float(frelu['top1_std']):.2f} (n=2)" in text
    for figure in ('accuracy.png', 'curves.png'):
        assert (out / figure).read_bytes().startswith(PNG_MAGIC)


def test_report_gives_frelu_minus_relu_with_a_welch_interval(results_files, tmp_path):
    out = tmp_path / 'report'
    assert cli_main(['report', *map(str, results_files), '--output', str(out), '--no-speed']) == 0
    top1 = {act: [json.loads(p.read_text())['top1'] for p in results_files if p.name.startswith(act)]
            for act in ('frelu', 'relu')}
    # Welch's interval from its textbook formula, to check the report's against.
    a, b = top1['frelu'], top1['relu']
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    difference = statistics.fmean(a) - statistics.fmean(b)
    half = stats.t.ppf(0.975, dof) * (va + vb) ** 0.5
    text = (out / 'report.md').read_text()
    assert f'| {difference:+.2f} | {difference - half:+.2f} to {difference + half:+.2f} |' in text


def test_report_keeps_recipes_and_flip_tta_apart(results_files, tmp_path):
    # One more ReLU run from a recipe file in its own folder, and a flip-TTA eval of a first run.
    data = tmp_path / 'data'
    make_image_folder(data, num_classes=4, per_class=8)
    recipe = tmp_path / 'zoo' / 'shortrecipe' / 'resnet20_relu_folder.yaml'
    recipe.parent.mkdir(parents=True)
    recipe.write_text('model: resnet20_relu\nepochs: 1\nbatch_size: 16\n')
    run = train(parse_args(['-c', str(recipe), '--dataset', 'folder', '--data-dir', str(data), '--threads', '1',
                            '--output', str(tmp_path / 'runs'), '--experiment', 'short']))
    extra = []
    for name, checkpoint, flags in (('short', run / 'last.pth.tar', []),
                                    ('tta', json.loads(results_files[0].read_text())['weights']['file'], ['--tta-flip'])):
        extra.append(tmp_path / f'{name}.json')
        assert validate_main(['--model', 'resnet20_frelu' if name == 'tta' else 'resnet20_relu', '--num-classes', '4',
                              '--checkpoint', str(checkpoint), '--dataset', 'folder', '--data-dir', str(data),
                              '--results-file', str(extra[-1]), *flags]) == 0
    out = tmp_path / 'report'
    assert cli_main(['report', *map(str, results_files), *map(str, extra), '--output', str(out), '--no-speed']) == 0
    with open(out / 'report.csv') as f:
        cells = {(row['recipe'], row['data'], row['act']): row for row in csv.DictReader(f)}
    assert cells['shortrecipe', 'folder/test', 'relu']['n'] == '1'
    assert cells['-', 'folder/test', 'relu']['n'] == '2'
    assert cells['-', 'folder/test, flip-TTA', 'frelu']['n'] == '1'
    assert cells['-', 'folder/test', 'frelu']['n'] == '2'


def test_report_rejects_files_that_are_not_results(tmp_path, capsys):
    bogus = tmp_path / 'bogus.json'
    bogus.write_text('{"hello": 1}')
    assert cli_main(['report', str(bogus), '--output', str(tmp_path / 'r'), '--no-speed']) == 2
    assert 'not a results file' in capsys.readouterr().err
    assert cli_main(['report', str(tmp_path / 'missing.json')]) == 2
    assert 'no such results file' in capsys.readouterr().err


def test_show_frelu_draws_kernels_and_conditions(results_files, tmp_path):
    checkpoint = json.loads(results_files[0].read_text())['weights']['file']
    assert cli_main(['show-frelu', '--checkpoint', checkpoint, '--num-classes', '4', '--output', str(tmp_path)]) == 0
    for figure in ('kernels.png', 'conditions.png'):
        assert (tmp_path / figure).read_bytes().startswith(PNG_MAGIC)


def test_show_frelu_needs_a_frelu_model(tmp_path, capsys):
    assert cli_main(['show-frelu', '--model', 'resnet20_relu', '--output', str(tmp_path)]) == 2
    assert 'no FReLU layers' in capsys.readouterr().err


def test_a_pair_of_single_runs_gets_its_difference_flagged_n_equals_1():
    from timm_frelu.studies.report import markdown

    def row(act, values):
        return dict(arch='resnet18', recipe='cpu30', data='shared/cifar10-jpeg/test', act=act, n=len(values),
                    top1_mean=statistics.fmean(values), top1_std=statistics.stdev(values) if len(values) > 1 else None,
                    top1_values=' '.join(map(str, values)), seeds='0', params_m=11.2, macs_g=0.56, results_files='r.json')
    text = markdown([row('frelu', [93.5]), row('relu', [93.1])])
    assert '| `resnet18` | `cpu30` | shared/cifar10-jpeg/test | +0.40 | none: n = 1 | - | 1, 1 |' in text
    assert 'A pair of single runs (n = 1) has no interval' in text
