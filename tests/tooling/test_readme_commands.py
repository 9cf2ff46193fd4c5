"""What a newcomer copies from the README runs as written; the commands in docs/ name real flags and
files. A README or doc that drifts from the code fails here.

The README's commands run for real, from a folder laid out as the README assumes: a clone of timm's
repository (``pytorch-image-models``, here the unchanged scripts in ../shared/timm-scripts), an
image folder ``my_images`` with ``train/`` and ``validation/`` (made here, 3 classes of 40 images),
and the unpacked ``cifar10-lossless-subset``. Training runs get one epoch instead of ten.
Installing (``pip``, ``git clone``) and the two ``make`` commands are what the test itself stands on.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_image_folder

from timm_frelu.training.data.shared import unpacked_archive, verified_archive

SCRIPTS = REPO.parent / 'shared' / 'timm-scripts'
DOCS = sorted((REPO / 'docs').glob('*.md'))
# Lines a reader runs to set up, not commands of this project's to check.
SETUP = ('pip ', 'git clone ', 'make ')
PROGRAMS = {'timm-frelu', 'timm-frelu-train', 'timm-frelu-validate', 'python', 'torchrun'}
OUTPUT_FLAGS = {'--output', '--snapshot', '--restore'}

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


def _help(program: tuple) -> str:
    argv = {'timm-frelu': [sys.executable, '-m', 'timm_frelu.cli'],
            'timm-frelu-train': [sys.executable, '-m', 'timm_frelu.train'],
            'timm-frelu-validate': [sys.executable, '-m', 'timm_frelu.validate']}
    head, *rest = program
    if head == 'python':  # python -m MODULE, or python SCRIPT
        cmd = [sys.executable, *rest]
    elif head == 'torchrun':
        cmd = [sys.executable, '-m', rest[-1]]
    else:
        cmd = argv[head] + list(rest)
    result = subprocess.run(cmd + ['--help'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f'{" ".join(cmd)} --help failed: {result.stderr[-2000:]}'
    return result.stdout


def _doc_commands():
    for doc in DOCS:
        for command in shell_commands(doc.read_text()):
            words = shlex.split(command.split(' > ')[0].split(' && ')[-1].split(' | ')[0])
            words = [w for w in words if not re.fullmatch(r'[A-Z_]+=\S*', w)]  # HF_TOKEN=... and the like
            while words and words[0] in ('nohup', 'nice', '-n', '10'):
                words = words[1:]
            if words and words[0] in PROGRAMS:
                yield doc.name, words


DOC_COMMANDS = list(_doc_commands())


@pytest.mark.parametrize('doc, words', DOC_COMMANDS, ids=[f'{d}:{" ".join(w)[:60]}' for d, w in DOC_COMMANDS])
def test_doc_command_names_real_flags_and_files(doc, words):
    if words[0] == 'python' and words[1] == '-m':
        program, args = tuple(words[:3]), words[3:]
    elif words[0] == 'python':
        program, args = tuple(words[:2]), words[2:]
    elif words[0] == 'torchrun':
        module = words.index('-m') + 1
        program, args = ('torchrun', '-m', words[module]), words[module + 1:]
    elif words[0] == 'timm-frelu':
        program, args = tuple(words[:2]), words[2:]
        if program[1] == 'gpu-zoo':
            program, args = tuple(words[:3]), words[3:]
    else:
        program, args = (words[0],), words[1:]
    usage = _help(program)
    for previous, arg in zip([None, *args], args):
        flag = arg.split('=')[0]
        if flag.startswith('--'):
            assert re.search(rf'{re.escape(flag)}\b', usage), f'{doc}: {" ".join(words)}: {flag} is not an option'
        elif previous in OUTPUT_FLAGS:
            continue  # a folder the command writes, or one a snapshot may not have made yet
        elif '/' in arg and arg.split('/')[0] in ('zoo_configs', 'benchmarks', 'checkpoints', 'docs'):
            assert (REPO / arg).exists() or '<' in arg or 'RUN' in arg, f'{doc}: {arg} does not exist'
