"""The shipped zoo: every published folder in checkpoints/ is complete, loads offline through
timm, gives back the accuracy its results.json records when the eval command runs again on the
shipped file, and travels through the Hub protocol unchanged."""
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from conftest import HUB_TOKEN, LOAD_SCRIPT, REPO, model_outputs, run_python, same_outputs
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file

from timm_frelu.fileio import file_sha256
from timm_frelu.pretrained import load_manifest
from timm_frelu.publishing import push
from timm_frelu.publishing.manifest import build_manifest
from timm_frelu.publishing.provenance import describe_test_data
from timm_frelu.publishing.push import REQUIRED_FILES
from timm_frelu.studies.summary import model_summary
from timm_frelu.training.main_job import DEFAULT_MODEL, default_tag
from timm_frelu.training.validate import parser as validate_parser
from timm_frelu.training.validate import validate

DEFAULT_TAG = default_tag()
CHECKPOINTS = REPO / 'checkpoints'
SHIPPED = sorted(results.parent for results in CHECKPOINTS.glob('*/results.json'))
# What push requires, plus the training record the zoo's cards point to.
PUBLISHED_FILES = {*REQUIRED_FILES, 'recipe.yaml', 'summary.csv'}
SIZE_LIMIT_MB = 100
# The 10,000 JPEG test images took ResNet-18 two minutes on a 2-core AVX2 EPYC (ResNet-50 has 2.4
# times its MACs). Every file's figure is re-evaluated on the 1,000 lossless images, and the JPEG
# figures of the networks up to this size check the JPEG decoding that every JPEG figure goes through.
JPEG_CHECK_MAX_MACS = 0.3e9

shipped = pytest.mark.parametrize('folder', SHIPPED, ids=[folder.name for folder in SHIPPED])


def _results(folder: Path) -> dict:
    return json.loads((folder / 'results.json').read_text())


def test_checkpoints_stay_small_and_only_unfinished_runs_keep_optimizer_state():
    files = [path for path in CHECKPOINTS.rglob('*') if path.is_file()]
    # Published weights are the zoo (fp16, 0.5-47 MB each); everything else stays small, the
    # unfinished runs' snapshots included: full ones only for small runs, lean ones for big runs.
    weights = [path for path in files if path.name == 'model.safetensors' and 'in-progress' not in path.parts]
    assert all(path.stat().st_size < 50 * 2 ** 20 for path in weights)
    assert sum(path.stat().st_size for path in files if path not in weights) < SIZE_LIMIT_MB * 2 ** 20
    training_states = [path for path in files if path.name.endswith('.pth.tar')]
    assert all(path.relative_to(CHECKPOINTS).parts[0] == 'in-progress' for path in training_states), training_states
    assert all(path.stat().st_size <= 16 * 2 ** 20 for path in training_states), 'a big run keeps a lean snapshot'


def test_the_package_manifest_lists_exactly_the_shipped_folders():
    assert list(load_manifest()) == build_manifest(CHECKPOINTS), 'run timm-frelu publish, or rebuild the manifest'


@shipped
def test_folder_is_complete_and_its_hash_matches(folder):
    assert PUBLISHED_FILES <= {path.name for path in folder.iterdir()}
    results = _results(folder)
    assert results['model'] == folder.name and results['weights_sha256'] == file_sha256(folder / 'model.safetensors')
    assert {evaluation['data']['dataset'] for evaluation in results['evaluations']} >= {
        'shared/cifar10-jpeg', 'shared/cifar10-lossless'}
    card = (folder / 'README.md').read_text()
    for evaluation in results['evaluations']:
        assert f"{evaluation['top1']:.2f}" in card


@shipped
def test_card_metadata_gives_each_test_sets_top1_under_that_test_sets_name(folder):
    # Read back as the Hub reads a card's model-index.
    filed = sorted((r.dataset_name, r.metric_value) for r in ModelCard.load(folder / 'README.md').data.eval_results)
    evaluations = [e for e in _results(folder)['evaluations'] if not e.get('tta_flip')]
    assert filed == sorted((describe_test_data(e['data']), round(e['top1'], 2)) for e in evaluations)


@shipped
def test_config_json_describes_the_folders_own_weights(folder):
    cfg = json.loads((folder / 'config.json').read_text())['pretrained_cfg']
    assert cfg['tag'] == folder.name.split('.', 1)[1] and cfg['origin_url'] == f'https://huggingface.co/timm-frelu/{folder.name}'
    assert _results(folder)['weights_sha256'] in cfg['description']


@shipped
def test_pretrained_loads_the_shipped_file_offline(folder):
    model = timm.create_model(folder.name, pretrained=True)
    assert model.pretrained_cfg['hf_hub_id'] == f'timm-frelu/{folder.name}'
    state = model.state_dict()
    for key, stored in load_file(folder / 'model.safetensors').items():
        assert (state[key].to(stored.dtype) == stored).all(), key


@pytest.mark.slow
@shipped
@pytest.mark.parametrize('dataset', ['shared/cifar10-lossless', 'shared/cifar10-jpeg'])
def test_eval_command_reproduces_the_recorded_accuracy(folder, dataset, request):
    if (dataset == 'shared/cifar10-jpeg' and model_summary(folder.name)['macs'] > JPEG_CHECK_MAX_MACS
            and not request.config.getoption('--full-zoo-eval')):
        pytest.skip('a big network: its file is checked on the lossless test set, the JPEG decoding on the small '
                    'ones; --full-zoo-eval checks this too')
    results = _results(folder)
    recorded = next(e for e in results['evaluations'] if e['data']['dataset'] == dataset)
    fresh = validate(validate_parser.parse_args(['--model', folder.name, '--pretrained', '--dataset', dataset]))
    assert fresh['weights']['sha256'] == recorded['weights']['sha256'] == results['weights_sha256']
    assert fresh['data']['content_sha256'] == recorded['data']['content_sha256'] and fresh['count'] == recorded['count']
    # Kernels may sum in another order on another CPU: allow one image's worth of argmax flips.
    assert abs(fresh['top1'] - recorded['top1']) <= 100 / fresh['count'] + 1e-9


@pytest.mark.slow
@pytest.mark.skipif(not (CHECKPOINTS / f'{DEFAULT_MODEL}.{DEFAULT_TAG}').is_dir(), reason='the default checkpoint is not shipped yet')
def test_default_checkpoint_round_trips_through_the_hub(hub, tmp_path):
    folder = CHECKPOINTS / f'{DEFAULT_MODEL}.{DEFAULT_TAG}'
    push(folder, endpoint=hub.endpoint, token=HUB_TOKEN)
    repo_id = f'timm-frelu/{folder.name}'
    assert sorted(HfApi(endpoint=hub.endpoint).list_repo_files(repo_id)) == sorted(p.name for p in folder.iterdir())
    expected = str(model_outputs(timm.create_model(folder.name, pretrained=True)).flatten().tolist())
    # Nothing shipped in that process: the tag's config downloads from the Hub repo.
    printed = run_python(LOAD_SCRIPT.format(name=folder.name), HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE='0',
                         HF_HUB_CACHE=str(tmp_path / 'cache'), TIMM_FRELU_CHECKPOINTS=str(tmp_path / 'nothing-shipped'))
    assert same_outputs(printed.strip(), expected)


@pytest.fixture(scope='module')
def wheel_python(tmp_path_factory):
    """The python of a fresh venv with this project installed from its wheel (a non-editable
    install: no checkout, no checkpoints folder). torch, timm and the rest come from this
    interpreter's site-packages, as they would from the user's."""
    root = tmp_path_factory.mktemp('wheel')
    repo = REPO
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps', '--no-build-isolation',
                    '--wheel-dir', str(root / 'dist'), str(repo)], check=True, capture_output=True)
    subprocess.run([sys.executable, '-m', 'venv', str(root / 'venv')], check=True)
    python = root / 'venv' / 'bin' / 'python'
    # `venv --system-site-packages` would give the base interpreter's packages, not those of the
    # venv or conda env this test runs in: list this interpreter's own site folders instead. Plain
    # paths, after the new venv's own: its wheel of this project comes first, and the editable
    # install's hooks there stay unprocessed.
    nested_site = subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                                 check=True, capture_output=True, text=True).stdout.strip()
    ours = [path for path in site.getsitepackages() + [site.getusersitepackages()] if Path(path).is_dir()]
    (Path(nested_site) / 'running-interpreter-site.pth').write_text('\n'.join(ours) + '\n')
    (wheel,) = (root / 'dist').glob('timm_frelu-*.whl')
    subprocess.run([str(python), '-m', 'pip', 'install', '--quiet', '--no-deps', '--force-reinstall', str(wheel)],
                   check=True, capture_output=True)
    return python


@pytest.mark.slow
@pytest.mark.skipif(not (CHECKPOINTS / f'{DEFAULT_MODEL}.{DEFAULT_TAG}').is_dir(), reason='the default checkpoint is not shipped yet')
def test_a_wheel_install_downloads_verified_weights_from_the_hub(wheel_python, hub, tmp_path):
    name = f'{DEFAULT_MODEL}.{DEFAULT_TAG}'
    push(CHECKPOINTS / name, endpoint=hub.endpoint, token=HUB_TOKEN)
    expected = str(model_outputs(timm.create_model(name, pretrained=True)).flatten().tolist())
    env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE='0', HF_HUB_CACHE=str(tmp_path / 'cache'))
    env.pop('TIMM_FRELU_CHECKPOINTS', None)

    def load(model_name):
        script = ('import timm_frelu.pretrained as zoo\nassert zoo.checkpoints_dir() is None, zoo.checkpoints_dir()\n'
                  'assert "site-packages" in zoo.__file__, zoo.__file__\n' + LOAD_SCRIPT.format(name=model_name))
        return subprocess.run([str(wheel_python), '-c', script], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    for model_name in (name, f'hf-hub:timm-frelu/{name}'):
        result = load(model_name)
        assert result.returncode == 0, result.stderr[-3000:]
        assert same_outputs(result.stdout.strip(), expected)
    # A repo whose weights are not the published ones is refused against the wheel's manifest.
    tampered = tmp_path / 'model.safetensors'
    tampered.write_bytes(bytes(b ^ 0xFF if i == 50_000 else b for i, b in enumerate((CHECKPOINTS / name / 'model.safetensors').read_bytes())))
    HfApi(endpoint=hub.endpoint, token=HUB_TOKEN).upload_file(
        path_or_fileobj=str(tampered), path_in_repo='model.safetensors', repo_id=f'timm-frelu/{name}')
    env['HF_HUB_CACHE'] = str(tmp_path / 'fresh-cache')
    result = load(name)
    assert result.returncode != 0 and "timm_frelu's manifest of published weights publishes" in result.stderr
