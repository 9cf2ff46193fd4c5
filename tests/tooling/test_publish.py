"""Publishing: a training run exported to a checkpoint folder, pushed to a Hub server that speaks
the real protocol (tests/hub_server.py), and loaded back through timm, online and offline."""
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from conftest import HUB_TOKEN as TOKEN
from conftest import LOAD_SCRIPT, make_image_folder, model_outputs, run_python, same_outputs
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file, save_file

from timm_frelu.fileio import file_sha256
from timm_frelu.publishing import PushError, publish, push
from timm_frelu.training.train import parse_args, train
from timm_frelu.training.validate import parser as validate_parser
from timm_frelu.training.validate import validate

# End to end: a training run, publishing and a Hub server. `pytest -m 'not slow'` leaves them out.
pytestmark = pytest.mark.slow

MODEL = 'resnet20_frelu.cifar10'
# A tag of its own: the zoo's manifest publishes other weights as resnet20_frelu.cifar10.
NAME = 'resnet20_frelu.test_cifar10'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), num_classes=10, per_class=6)


@pytest.fixture(scope='module')
def run_dir(data_dir, tmp_path_factory):
    return train(parse_args([
        '--dataset', 'folder', '--data-dir', str(data_dir), '--model', MODEL, '--epochs', '1', '--batch-size', '20',
        '--model-ema', '--threads', '1', '--output', str(tmp_path_factory.mktemp('runs')), '--experiment', 'run']))


@pytest.fixture(scope='module')
def published(run_dir, data_dir, tmp_path_factory):
    return publish(run_dir, NAME, output_root=tmp_path_factory.mktemp('checkpoints'),
                   eval_datasets=['folder'], data_dir=str(data_dir))


def test_published_folder_holds_fp16_ema_weights_config_results_and_card(published, run_dir, data_dir):
    assert {p.name for p in published.iterdir()} == {
        'model.safetensors', 'config.json', 'results.json', 'README.md', 'recipe.yaml', 'summary.csv', 'frelu.png',
        'learning_curve.png'}
    weights = load_file(published / 'model.safetensors')
    assert weights['conv1.weight'].dtype == torch.float16 and weights['layer1.0.act1.bn.num_batches_tracked'].dtype == torch.int64
    checkpoint = torch.load(run_dir / 'last.pth.tar', weights_only=False)
    assert torch.equal(weights['fc.weight'], checkpoint['state_dict_ema']['fc.weight'].half())
    results = json.loads((published / 'results.json').read_text())
    assert results['weights_sha256'] == file_sha256(published / 'model.safetensors')
    assert results['weights'] == 'ema' and results['weights_dtype'] == 'float16'
    assert results['evaluations'][0]['training']['precision'] == 'float32'
    # The recorded evaluation is the eval command's, on exactly this file.
    again = validate(validate_parser.parse_args(['--model', MODEL, '--checkpoint', str(published / 'model.safetensors'),
                                                 '--dataset', 'folder', '--data-dir', str(data_dir)]))
    recorded, recorded_tta = results['evaluations']
    assert recorded['top1'] == again['top1'] and recorded['weights']['sha256'] == results['weights_sha256']
    # Flip-TTA is evaluated on the same file and kept apart: not in the model index, a column of its own.
    again_tta = validate(validate_parser.parse_args(['--model', MODEL, '--checkpoint', str(published / 'model.safetensors'),
                                                     '--dataset', 'folder', '--data-dir', str(data_dir), '--tta-flip']))
    assert (recorded['tta_flip'], recorded_tta['tta_flip']) == (False, True) and recorded_tta['top1'] == again_tta['top1']
    card = ModelCard.load(published / 'README.md')
    assert card.data.library_name == 'timm'
    assert [r.metric_value for r in card.data.eval_results] == [round(recorded['top1'], 2)]
    assert f"{recorded['top1']:.2f}" in card.text and 'Funnel' in card.text and results['weights_sha256'] in card.text
    assert f" | {recorded['loss']:.4f} | {recorded_tta['top1']:.2f} |" in card.text and 'top-1 with flip-TTA (%)' in card.text
    assert '![learning curve](learning_curve.png)' in card.text and 'the published ones are from epoch 1.' in card.text
    assert (published / 'learning_curve.png').read_bytes().startswith(b'\x89PNG')


def test_the_published_config_describes_these_weights_not_the_names_earlier_ones(published):
    # resnet20_frelu.cifar10, which the run trained as, has weights of its own in the manifest.
    results = json.loads((published / 'results.json').read_text())
    cfg = timm.create_model(f'local-dir:{published}').pretrained_cfg
    assert cfg['tag'] == 'test_cifar10' and cfg['origin_url'] == f'https://huggingface.co/timm-frelu/{NAME}'
    assert cfg['description'] == f"1 epochs on folder/train; SHA256 {results['weights_sha256']}"
    recorded = results['evaluations'][0]
    assert list(cfg['notes']) == [f"top-1 {recorded['top1']:.2f}% on folder ({recorded['data']['dataset']}/test)"]


def test_local_dir_loading_gives_the_published_model(published):
    model = timm.create_model(f'local-dir:{published}', pretrained=True)
    reference = timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=dict(file=str(published / 'model.safetensors')))
    assert torch.equal(model_outputs(model), model_outputs(reference))


def test_republishing_replaces_the_folder_whole(published, run_dir, data_dir):
    again = publish(run_dir, NAME, output_root=published.parent, eval_datasets=['folder'], data_dir=str(data_dir),
                    weights='model', dtype='float32', figure=False)
    assert again == published
    assert json.loads((published / 'results.json').read_text())['weights_dtype'] == 'float32'
    assert not (published / 'frelu.png').exists() and not (published / 'learning_curve.png').exists()
    assert 'learning_curve.png' not in (published / 'README.md').read_text()
    assert [p.name for p in published.parent.iterdir()] == [NAME]  # no staging or backup left behind
    publish(run_dir, NAME, output_root=published.parent, eval_datasets=['folder'], data_dir=str(data_dir))


def test_corrupted_weights_fail_the_integrity_check(published, tmp_path):
    broken = tmp_path / NAME
    broken.mkdir()
    for path in published.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    data = bytearray((broken / 'model.safetensors').read_bytes())
    data[-10] ^= 0xFF
    (broken / 'model.safetensors').write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match='has SHA256 .* but .*results.json publishes .*corrupt'):
        timm.create_model(f'local-dir:{broken}', pretrained=True)
    with pytest.raises(PushError, match='weights changed after they were evaluated'):
        push(broken, endpoint='http://127.0.0.1:9', token=TOKEN)


def test_push_round_trip_through_the_hub_protocol(hub, published, tmp_path):
    url = push(published, endpoint=hub.endpoint, token=TOKEN)
    assert url.startswith(f'{hub.endpoint}/timm-frelu/{NAME}/commit/')
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    assert sorted(api.list_repo_files(f'timm-frelu/{NAME}')) == sorted(p.name for p in published.iterdir())
    routes = [r.rsplit(' ', 1)[0] for r in hub.routes()]
    assert routes[0] == 'POST /api/repos/create'
    for expected in ('POST /api/validate-yaml', f'POST /api/models/timm-frelu/{NAME}/preupload/main',
                     f'POST /timm-frelu/{NAME}.git/info/lfs/objects/batch', f'POST /api/models/timm-frelu/{NAME}/commit/main'):
        assert expected in routes
    assert routes.index(f'POST /api/models/timm-frelu/{NAME}/commit/main') > routes.index(f'POST /timm-frelu/{NAME}.git/info/lfs/objects/batch')
    assert all(status != 404 for *_, status in hub.state.log)

    expected = str(model_outputs(timm.create_model(f'local-dir:{published}', pretrained=True)).flatten().tolist())
    env = dict(HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE='0', HF_HUB_CACHE=str(tmp_path / 'cache'),
               TIMM_FRELU_CHECKPOINTS=str(tmp_path / 'nothing-shipped'))
    via_hub_name = run_python(LOAD_SCRIPT.format(name=f'hf-hub:timm-frelu/{NAME}'), **env).strip()
    assert same_outputs(via_hub_name, expected)

    # Offline, the cache the downloads filled serves the same weights; weights that do not exist are a clear error.
    offline = dict(env, HF_HUB_OFFLINE='1')
    assert same_outputs(run_python(LOAD_SCRIPT.format(name=f'hf-hub:timm-frelu/{NAME}'), **offline).strip(), expected)
    missing = subprocess.run([sys.executable, '-c', LOAD_SCRIPT.format(name='resnet32_frelu.cifar10')],
                             env=dict(os.environ, **offline), capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0
    assert 'No pretrained weights exist for resnet32_frelu.cifar10' in missing.stderr


def test_push_updates_an_existing_card_in_one_commit(hub, published, tmp_path):
    push(published, endpoint=hub.endpoint, token=TOKEN)
    folder = tmp_path / NAME
    folder.mkdir()
    for path in published.iterdir():
        if path.name != 'frelu.png':
            (folder / path.name).write_bytes(path.read_bytes())
    (folder / 'README.md').write_text((published / 'README.md').read_text() + '\nUpdated card.\n')
    push(folder, endpoint=hub.endpoint, token=TOKEN)
    repo = hub.state.repos[f'timm-frelu/{NAME}']
    assert len(repo.commits) == 2
    assert repo.files['README.md'].decode().endswith('Updated card.\n')
    assert 'frelu.png' not in repo.files  # the repo mirrors the folder


def test_bad_and_missing_tokens_are_clear_errors(hub, published, monkeypatch, tmp_path):
    with pytest.raises(PushError, match=r'refused the token .*\(401\).*HF_TOKEN'):
        push(published, endpoint=hub.endpoint, token='hf_wrong')
    assert hub.state.repos == {}
    monkeypatch.delenv('HF_TOKEN', raising=False)
    monkeypatch.setenv('HF_HOME', str(tmp_path))  # no stored login either
    monkeypatch.setattr('huggingface_hub.constants.HF_TOKEN_PATH', str(tmp_path / 'token'))
    with pytest.raises(PushError, match='No Hugging Face token: set HF_TOKEN'):
        push(published, endpoint=hub.endpoint)


def test_interrupted_upload_is_retried_into_one_commit(hub, published):
    hub.state.failures.lfs_put_drop = 1
    push(published, endpoint=hub.endpoint, token=TOKEN, base_delay=0.01)
    puts = [status for method, path, status in hub.state.log if method == 'PUT']
    assert puts[0] == 0 and 200 in puts  # the first upload broke off, a later one went through
    repo = hub.state.repos[f'timm-frelu/{NAME}']
    assert len(repo.commits) == 1 and repo.files['model.safetensors'] == (published / 'model.safetensors').read_bytes()


def test_server_errors_during_commit_are_retried_or_leave_the_repo_untouched(hub, published):
    hub.state.failures.commit_500 = 1
    push(published, endpoint=hub.endpoint, token=TOKEN, base_delay=0.01)
    repo = hub.state.repos[f'timm-frelu/{NAME}']
    assert len(repo.commits) == 1
    before = (list(repo.commits), dict(repo.files))
    hub.state.failures.commit_500 = 100
    with pytest.raises(PushError, match='after 4 attempts .*Nothing was committed'):
        push(published, endpoint=hub.endpoint, token=TOKEN, base_delay=0.01)
    assert (repo.commits, repo.files) == before


def test_incomplete_folder_and_dry_run_send_nothing(hub, published, tmp_path, capsys):
    incomplete = tmp_path / NAME
    incomplete.mkdir()
    (incomplete / 'model.safetensors').write_bytes((published / 'model.safetensors').read_bytes())
    with pytest.raises(PushError, match='lacks config.json, results.json, README.md'):
        push(incomplete, endpoint=hub.endpoint, token=TOKEN)
    push(published, endpoint=hub.endpoint, token=TOKEN, dry_run=True)
    out = capsys.readouterr().out
    files = len(list(published.iterdir()))
    assert f'would push {files} files as one commit to {hub.endpoint}/timm-frelu/{NAME}' in out
    assert file_sha256(published / 'model.safetensors') in out
    assert hub.state.log == []


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_olah_mirror_serves_a_published_checkpoint_to_timm(published, tmp_path):
    """olah, a third-party Hub mirror, serving a local git repo of the checkpoint folder offline."""
    pytest.importorskip('olah', reason='olah (PyPI) is not installed; `pip install olah` to run this test')
    repo = tmp_path / 'mirrors' / 'models' / 'timm-frelu' / NAME
    repo.mkdir(parents=True)
    for path in published.iterdir():
        (repo / path.name).write_bytes(path.read_bytes())
    git = ['git', '-C', str(repo), '-c', 'user.name=timm-frelu tests', '-c', 'user.email=tests@localhost']
    for cmd in (['init', '-q', '-b', 'main'], ['add', '.'], ['commit', '-q', '-m', 'publish']):
        subprocess.run(git + cmd, check=True)
    port = _free_port()
    config = tmp_path / 'olah.toml'
    config.write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{tmp_path / "repos"}"\n'
        f'mirrors-path = ["{tmp_path / "mirrors"}"]\n\n[accessibility]\noffline = true\n')
    server = subprocess.Popen([sys.executable, '-m', 'olah.server', '-c', str(config)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        import socket
        import time
        deadline = time.time() + 60
        while time.time() < deadline:
            assert server.poll() is None, server.stdout.read().decode()[-2000:]
            try:
                socket.create_connection(('127.0.0.1', port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        script = LOAD_SCRIPT.format(name=f'hf-hub:timm-frelu/{NAME}') + '''
from huggingface_hub import HfApi, file_exists, snapshot_download

repo = 'timm-frelu/{0}'
print(sorted(HfApi().list_repo_files(repo)))
print(file_exists(repo, 'results.json'), file_exists(repo, 'nope.bin'))
print(sorted(p.name for p in __import__('pathlib').Path(snapshot_download(repo)).iterdir()))
'''.format(NAME)
        out = run_python(script, HF_ENDPOINT=f'http://127.0.0.1:{port}', HF_HUB_OFFLINE='0',
                          HF_HUB_CACHE=str(tmp_path / 'cache')).strip().splitlines()
    finally:
        os.kill(server.pid, 15)
        server.wait(timeout=30)
    expected = str(model_outputs(timm.create_model(f'local-dir:{published}', pretrained=True)).flatten().tolist())
    files = sorted(p.name for p in published.iterdir())
    assert same_outputs(out[0], expected)
    assert out[1:] == [str(files), 'True False', str(files)]


def test_report_reads_published_results_and_fills_the_readme_section(published, tmp_path):
    from timm_frelu.cli import main as cli_main
    readme = tmp_path / 'README.md'
    readme.write_text('# x\n<!-- results:start (generated) -->\nold\n<!-- results:end -->\ntail\n')
    assert cli_main(['report', str(published / 'results.json'), '--output', str(tmp_path / 'report'), '--no-speed',
                     '--update-readme', str(readme)]) == 0
    text = readme.read_text()
    top1 = json.loads((published / 'results.json').read_text())['evaluations'][0]['top1']
    assert f'{top1:.2f} (n=1)' in text and '\nold\n' not in text and text.endswith('<!-- results:end -->\ntail\n')
    assert '![top-1 by activation](report/accuracy.png)' in text
    assert (tmp_path / 'report' / 'curves.png').read_bytes().startswith(b'\x89PNG')


def test_a_published_folder_republishes_in_place_with_its_records(published, data_dir):
    """Republishing a published folder (to regenerate its card and records with a newer publish)
    keeps its weights and what its first publish recorded of the run."""
    before = json.loads((published / 'results.json').read_text())
    again = publish(published, NAME, output_root=published.parent, eval_datasets=['folder'], data_dir=str(data_dir),
                    figure=False)
    after = json.loads((again / 'results.json').read_text())
    for key in ('weights_sha256', 'weights', 'weights_dtype', 'source_checkpoint', 'source_epoch'):
        assert after[key] == before[key], key
    assert after['evaluations'][0]['top1'] == before['evaluations'][0]['top1']
    assert (again / 'recipe.yaml').read_text() == (published / 'recipe.yaml').read_text()


def test_a_run_recorded_without_a_card_counts_in_the_report_beside_the_published_seed(published, run_dir, data_dir,
                                                                                        tmp_path):
    """An extra seed is recorded as a published weight is evaluated (the stored fp16 file), with no
    card, so it cannot be pushed as a tag's weights; the report averages it with the published one."""
    from timm_frelu.cli import main as cli_main
    from timm_frelu.publishing.push import check_folder
    from timm_frelu.studies.report import build_rows, load_results
    record_root = tmp_path / 'seeds' / 'run-seed1'
    recorded = publish(run_dir, NAME, output_root=record_root, eval_datasets=['folder'], data_dir=str(data_dir),
                       card=False)
    assert {p.name for p in recorded.iterdir()} == {'model.safetensors', 'config.json', 'results.json', 'recipe.yaml',
                                                   'summary.csv'}
    records = json.loads((recorded / 'results.json').read_text())
    again = validate(validate_parser.parse_args(['--model', MODEL, '--checkpoint', str(recorded / 'model.safetensors'),
                                                 '--dataset', 'folder', '--data-dir', str(data_dir)]))
    assert records['evaluations'][0]['top1'] == again['top1']
    with pytest.raises(PushError, match='lacks README.md'):
        check_folder(recorded)
    config = json.loads((recorded / 'config.json').read_text())['pretrained_cfg']
    assert 'origin_url' not in config and records['weights_sha256'] in config['description']  # no Hub repo of its own
    rows = build_rows(load_results([published / 'results.json', recorded / 'results.json']), speed=False)
    assert {row['n'] for row in rows} == {2}
    # Without --output a record would land among the published weights: refused, naming the fix.
    assert cli_main(['publish', str(run_dir), '--name', NAME, '--no-card']) == 2


def test_a_run_restarted_from_weights_alone_says_so_in_its_card(run_dir, data_dir, tmp_path):
    """A run a queue restored on a new machine goes on from its lean snapshot's weights alone: the
    card must not pass it off as one unbroken run, nor give the restart as the way to repeat it."""
    restart = tmp_path / 'restarted' / 'restart.safetensors'  # the name the queue restores a lean snapshot to
    restart.parent.mkdir()
    save_file(torch.load(run_dir / 'last.pth.tar', weights_only=False)['state_dict'], restart)
    restarted = train(parse_args([
        '--dataset', 'folder', '--data-dir', str(data_dir), '--model', MODEL, '--epochs', '2', '--batch-size', '20',
        '--model-ema', '--threads', '1', '--initial-checkpoint', str(restart), '--start-epoch', '1',
        '--output', str(tmp_path), '--experiment', 'restarted']))
    folder = publish(restarted, NAME, output_root=tmp_path / 'checkpoints', eval_datasets=['folder'], data_dir=str(data_dir))
    results = json.loads((folder / 'results.json').read_text())
    assert results['evaluations'][0]['training']['restarts'] == [dict(epoch=1, weights='restart.safetensors')]
    card = ModelCard.load(folder / 'README.md').text
    assert ("It was not one unbroken run: it went on at epoch 1 from the weights in `restart.safetensors` (its queue's "
            "4-bit lean snapshot, restored on a new machine), with fresh optimizer momentum and a fresh EMA.") in card
    command = next(line.strip() for line in card.splitlines() if line.strip().startswith('python -m timm_frelu.train'))
    assert '--initial-checkpoint' not in command and '--start-epoch' not in command and '--epochs 2' in command
