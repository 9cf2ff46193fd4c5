"""What a newcomer copies from the README, and every command in docs/, runs as written. A README or
doc that drifts from the code fails here.

The README's commands run for real, from a folder laid out as the README assumes: a clone of timm's
repository (``pytorch-image-models``, here the unchanged scripts in ../shared/timm-scripts), an
image folder ``my_images`` with ``train/`` and ``validation/`` (made here, 3 classes of 40 images),
and the unpacked ``cifar10-lossless-subset``. Training runs get one epoch instead of ten.
Installing (``pip``, ``git clone``) and the two ``make`` commands are what the test itself stands on.
The docs' commands run in a copy of the checkout (below), long ones shorter or stopped once they train.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import HUB_TOKEN, REPO, make_image_folder

from timm_frelu.training.data.shared import unpacked_archive, verified_archive

SCRIPTS = REPO.parent / 'shared' / 'timm-scripts'
# Lines a reader runs to set up, not commands of this project's to check.
SETUP = ('pip ', 'git clone ', 'make ')
PROGRAMS = {'timm-frelu', 'timm-frelu-train', 'timm-frelu-validate', 'python', 'torchrun'}

pytestmark = pytest.mark.slow


def shell_commands(markdown: str):
    """The indented command lines of a Markdown file (outside code fences), continuations joined
    and comments dropped."""
    commands, fenced, pending = [], False, ''
    for line in markdown.splitlines():
        if line.startswith('```'):
            fenced = not fenced
            continue
        if fenced or not line.startswith('    ') or line.strip().startswith('#'):
            continue
        text = pending + line.strip()
        if text.endswith('\\'):
            pending = text[:-1].rstrip() + ' '
            continue
        pending = ''
        commands.append(re.sub(r'\s+#\s.*$', '', text).strip())
    return commands


def python_blocks(markdown: str):
    return re.findall(r'```python\n(.*?)```', markdown, flags=re.S)


@pytest.fixture(scope='module')
def newcomer(tmp_path_factory):
    """A working folder as the README's reader has it."""
    root = tmp_path_factory.mktemp('newcomer')
    (root / 'pytorch-image-models').symlink_to(SCRIPTS)
    make_image_folder(root / 'my_images', num_classes=3, per_class=40, splits=('train', 'validation'))
    (root / 'cifar10-lossless-subset').symlink_to(unpacked_archive(*verified_archive('cifar10-lossless')))
    return root


README_COMMANDS = [c for c in shell_commands((REPO / 'README.md').read_text())
                   if c.split()[0] in PROGRAMS and not c.startswith(SETUP)]


@pytest.mark.skipif(not SCRIPTS.is_dir(), reason=f"timm's scripts are not at {SCRIPTS}")
@pytest.mark.parametrize('command', README_COMMANDS)
def test_readme_command_runs_as_written(command, newcomer):
    shorter = command.replace('--epochs 10', '--epochs 1')
    env = dict(os.environ, PATH=f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')
    result = subprocess.run(shorter, shell=True, cwd=newcomer, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f'{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}'
    assert 'Traceback' not in result.stderr and 'warning:' not in result.stderr, result.stderr[-3000:]
    if 'train.py' in command or 'timm_frelu.train' in command:
        assert re.search(r'Train: 0 \[\s*\d+/', result.stdout + result.stderr), 'the fine-tuning trained nothing'


def test_the_readme_has_the_commands_a_newcomer_needs():
    joined = '\n'.join(README_COMMANDS)
    for needed in ('train.py', 'validate.py', 'onnx_export.py', 'onnx_validate.py', 'timm_frelu.train'):
        assert needed in joined, needed


@pytest.mark.parametrize('index', range(len(python_blocks((REPO / 'README.md').read_text()))))
def test_readme_python_runs_as_written(index):
    code = python_blocks((REPO / 'README.md').read_text())[index]
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f'{code}\n{result.stderr[-3000:]}'


# The docs' commands run in a copy of this checkout, with their placeholders made: QUEUE.yaml,
# SWEEP.yaml, A.yaml and B.yaml are tiny files of those names (B's study run), RUN (and
# <experiment>) a tiny training run, FILES_AT what the GPU job returns, the recipe study's stored
# studies are copied where its commands say, and the PostgreSQL and Hub servers are local ones.
DOCS = sorted((REPO / 'docs').rglob('*.md'))
TINY_TRAINING = dict(dataset='shared/cifar10-lossless', train_split='train[:128]', val_split='test[:64]', epochs=1,
                     batch_size=32, warmup_epochs=0, threads=1)
TINY_QUEUE = dict(output='output/queue', runs=[dict(experiment='tiny', config='zoo_configs/cpu/resnet20_frelu_cifar10.yaml',
                                                    args=TINY_TRAINING)])
TINY_SWEEP = dict(recipe='zoo_configs/cpu/resnet20_frelu_cifar10.yaml', args=dict(TINY_TRAINING, model_ema=False),
                  params=dict(lr=dict(type='float', low=0.01, high=0.1, log=True)),
                  objective=dict(metric='eval_top1', direction='maximize'), sampler='tpe', pruner='none', n_trials=1)
FILLED = [
    (r'output/zoo/<experiment>', 'output/train/RUN'),
    (r'<model>\.<tag>', 'resnet20_frelu.cifar10'),
    (r'docs/results/seeds/<experiment>', 'docs/results/seeds/doc-run'),
    (r'HF_TOKEN=\.\.\.', f'HF_TOKEN={HUB_TOKEN}'),
]
# Long runs run shorter: flags after the command's own override them.
SHORTER = [
    (r'(-c zoo_configs/cpu/resnet20_frelu_cifar10.yaml --dataset shared/cifar10-jpeg)',
     r"\1 --epochs 1 --warmup-epochs 0 --train-split 'train[:256]' --val-split 'test[:256]' -b 64"),
    (r'--epochs 10\b', '--epochs 1'),
    (r'(cpu_resnet20_example.yaml)$', r'\1 --n-trials 1'),
    (r'(benchmarks/loader.py)$', r'\1 --batches 3'),
    (r'(benchmarks/perf.py)$', r'\1 --archs resnet20 --repeats 1 --bf16 off'),
    (r'(benchmarks/train_one_epoch.py)$', r'\1 --images 256'),
    (r'--images 6400', '--images 128'),  # one batch of each precision
    # Published runs are evaluated on the 1,000 lossless test images only, not the 10,000 JPEG ones too.
    (r'^(timm-frelu (gpu-zoo )?publish .*)$', r'\1 --eval-dataset shared/cifar10-lossless'),
]
# The example sweep's file trains each trial for 2 epochs on 4,000 images; its copy here, on 256 for one.
SHORTER_FILES = {'zoo_configs/sweeps/cpu_resnet20_example.yaml': dict(
    epochs=1, train_split='train[:256]', val_split='test[:128]')}
# Commands that train for hours: each runs until it has trained a step (or ends sooner), then is stopped.
STOPPED_AFTER_A_STEP = (r'cpu_study_cifar10.yaml --restore', r'recipe_study_resnet20_\w+\.yaml --(seed|enqueue)')
TRAINED_A_STEP = re.compile(r'Train: \d+ \[\s*1/')


def _doc_commands():
    return [(str(doc.relative_to(REPO / 'docs')), command) for doc in DOCS
            for command in shell_commands(doc.read_text()) if not command.startswith(SETUP)]


DOC_COMMANDS = _doc_commands()


@pytest.fixture(scope='module')
def checkout(tmp_path_factory, gpu_zoo_returned):
    """A copy of this checkout (what git tracks, or would), with the docs' placeholders made."""
    root = tmp_path_factory.mktemp('doc-commands') / 'timm-frelu'
    listed = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split('\0')
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    for name, shorter in SHORTER_FILES.items():
        sweep = yaml.safe_load((root / name).read_text())
        sweep['args'].update(shorter)
        (root / name).write_text(yaml.safe_dump(sweep))
    make_image_folder(root / 'my_images', num_classes=3, per_class=40, splits=('train', 'validation'))
    (root / 'QUEUE.yaml').write_text(yaml.safe_dump(TINY_QUEUE))
    for name in ('SWEEP', 'A', 'B'):
        (root / f'{name}.yaml').write_text(yaml.safe_dump(dict(TINY_SWEEP, study_name=f'doc-{name.lower()}')))
    for stored in (root / 'docs' / 'recipe-study').glob('*/study.db'):
        (root / 'output' / 'sweeps' / stored.parent.name).mkdir(parents=True)
        shutil.copy2(stored, root / 'output' / 'sweeps' / stored.parent.name / 'study.db')
    (root / 'FILES_AT').symlink_to(gpu_zoo_returned)
    (root / 'home').mkdir()
    env = _doc_env(root)
    for setup in ([sys.executable, '-m', 'timm_frelu.train', '--model', 'resnet20_frelu', '--output', 'output/train',
                   '--experiment', 'RUN', *(f"--{key.replace('_', '-')}={value}" for key, value in TINY_TRAINING.items())],
                  ['timm-frelu', 'sweep', 'B.yaml']):  # B's study, whose best A tries
        result = subprocess.run(setup, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
    return root


def _doc_env(checkout: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(checkout), HOME=str(checkout / 'home'),
                TIMM_FRELU_SHARED_DATA=str(REPO.parent / 'shared' / 'data'),
                PATH=f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')


def _filled(command: str) -> str:
    """The command with its placeholders filled, and shorter if it is long."""
    for pattern, replacement in FILLED + SHORTER:
        command = re.sub(pattern, replacement, command)
    return command


@pytest.mark.parametrize('doc, command', DOC_COMMANDS, ids=[f'{d}:{c[:70]}' for d, c in DOC_COMMANDS])
def test_doc_command_runs_as_written(doc, command, checkout, request):
    env = _doc_env(checkout)
    if 'postgresql://' in command:
        command = re.sub(r'postgresql://\S+', request.getfixturevalue('postgres'), command)
    if 'HF_TOKEN=' in command:
        env.update(HF_ENDPOINT=request.getfixturevalue('hub').endpoint, HF_HUB_OFFLINE='0')
    filled = _filled(command)
    output = checkout.parent / 'output.txt'
    logs = [Path(log.replace('~', str(checkout / 'home'))) for log in re.findall(r'> (\S+\.log)', filled)]
    with open(output, 'w') as out:
        shell = subprocess.Popen(['bash', '-c', filled + '\nwait'], cwd=checkout, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)

    def printed() -> str:
        return ''.join(p.read_text() for p in [output, *(log if log.is_absolute() else checkout / log for log in logs)]
                       if p.is_file())

    if any(re.search(pattern, command) for pattern in STOPPED_AFTER_A_STEP):
        deadline = time.time() + 900
        while shell.poll() is None and time.time() < deadline and not TRAINED_A_STEP.search(printed()):
            time.sleep(1)
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
            assert TRAINED_A_STEP.search(printed()), f'{filled}\n{printed()[-4000:]}'
            return
    else:
        shell.wait(timeout=1800)
    assert shell.returncode == 0, f'{filled}\n{printed()[-4000:]}'
    assert 'Traceback' not in printed(), printed()[-4000:]


def test_the_docs_have_their_commands():
    commands = '\n'.join(c for _, c in DOC_COMMANDS)
    for needed in ('timm_frelu.train', 'torchrun', 'train-queue', 'publish', 'push', 'gpu-zoo prepare', 'gpu-zoo publish',
                   'sweep', 'rank-check'):
        assert needed in commands, needed
