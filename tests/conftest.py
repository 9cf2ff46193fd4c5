import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from glob import glob
from pathlib import Path
from typing import Callable, List

# No test may reach the internet; the hub client reads this when it is first imported.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
# The test Hub server speaks the classic LFS upload protocol, not Xet.
os.environ['HF_HUB_DISABLE_XET'] = '1'
# Unpacked archives and decoded tensors go to a cache of this test session, not the user's.
os.environ['TIMM_FRELU_CACHE'] = tempfile.mkdtemp(prefix='timm-frelu-test-cache-')

import huggingface_hub  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hub_server import HubServer  # noqa: E402
from PIL import Image  # noqa: E402

import timm_frelu  # noqa: E402,F401  registers the models and the activation

REPO = Path(__file__).resolve().parents[1]  # the checkout: the tests live in tests/library and tests/tooling
HUB_TOKEN = 'hf_test_token'
# Prints a pretrained model's outputs on a fixed batch: argv[1], or the name formatted in.
LOAD_SCRIPT = '''
import sys, torch, timm, timm_frelu
model = timm.create_model(sys.argv[1] if len(sys.argv) > 1 else {name!r}, pretrained=True).eval()
torch.manual_seed(0)
print(model(torch.randn(2, 3, 32, 32)).flatten().tolist())
'''


def pytest_addoption(parser):
    parser.addoption('--full-zoo-eval', action='store_true',
                     help="also re-evaluate the big networks' weights on the 10,000 JPEG test images (minutes each on a CPU)")


def make_image_folder(root: Path, num_classes: int, per_class: int, size: int = 32, splits=('train', 'test'), seed: int = 0):
    """Write a learnable image folder: each class has its own colour, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    colours = torch.randint(0, 256, (num_classes, 3, 1, 1), generator=generator)
    for split in splits:
        for c in range(num_classes):
            folder = root / split / f'class_{c:03d}'
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                noise = torch.randint(-40, 41, (3, size, size), generator=generator)
                image = (colours[c] + noise).clamp(0, 255).to(torch.uint8)
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f'{c * per_class + i:05d}.png')
    return root


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def kill_when(cmd: List[str], ready: Callable[[], bool], settle: float = 0.0, timeout: float = 300,
              poll: float = 0.1) -> None:
    """Start ``cmd``, wait until ``ready()`` (asked every ``poll`` seconds), then ``kill -9`` it
    (after ``settle`` seconds)."""
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and process.poll() is None and not ready():
            time.sleep(poll)
        time.sleep(settle)
        assert process.poll() is None, 'the process ended before it could be killed'
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()


@pytest.fixture
def hub(monkeypatch):
    """A local Hub server (tests/hub_server.py) that accepts HUB_TOKEN."""
    # The suite runs offline (above); talking to this local server is the exception.
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    with HubServer(tokens=(HUB_TOKEN,)) as server:
        yield server


def run_python(script: str, **env: str) -> str:
    """Run ``script`` in a fresh interpreter with ``env`` added; its stdout, or fail with its stderr."""
    result = subprocess.run([sys.executable, '-c', script], env=dict(os.environ, **env), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def model_outputs(model: torch.nn.Module) -> torch.Tensor:
    """The eval outputs LOAD_SCRIPT prints, computed in this process."""
    torch.manual_seed(0)
    return model.eval()(torch.randn(2, 3, 32, 32))


def same_outputs(printed: str, expected: str) -> bool:
    """Outputs printed by another process: equal up to float rounding."""
    return torch.allclose(torch.tensor(json.loads(printed)), torch.tensor(json.loads(expected)), atol=1e-6)


def _postgres_bin(name):
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob(f'/usr/lib/postgresql/*/bin/{name}'))
    return candidates[-1] if candidates else None


@pytest.fixture
def postgres(tmp_path):
    initdb, pg_ctl = _postgres_bin('initdb'), _postgres_bin('pg_ctl')
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL is not installed (Debian's postgresql package; .ci/run installs it)")
    pytest.importorskip('psycopg2', reason='psycopg2 is not installed (pip install psycopg2-binary)')
    # The server refuses to run as root; Debian's package creates the postgres user, who must
    # reach the data folder (pytest's own tmp folders are private to root).
    data = Path(tempfile.mkdtemp(prefix='timm-frelu-pg-'))
    as_postgres = ['runuser', '-u', 'postgres', '--'] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(data, 'postgres')
    subprocess.run(as_postgres + [initdb, '-D', str(data), '-U', 'postgres', '--auth=trust'], check=True,
                   capture_output=True)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    subprocess.run(as_postgres + [pg_ctl, '-D', str(data), '-w', '-l', str(data / 'server.log'), '-o',
                                  f'-p {port} -c listen_addresses=127.0.0.1 -k {data}', 'start'], check=True,
                   capture_output=True)
    try:
        import psycopg2
        connection = psycopg2.connect(host='127.0.0.1', port=port, user='postgres', dbname='postgres')
        connection.autocommit = True
        connection.cursor().execute('CREATE DATABASE optuna')
        connection.close()
        yield f'postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna'
    finally:
        subprocess.run(as_postgres + [pg_ctl, '-D', str(data), '-m', 'fast', 'stop'], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


GPU_ZOO_PART_SIZE = 200_000  # a resnet20's fp16 weights (0.56 MB) come back in several parts
GPU_ZOO_PLAN = '''
defaults:
  dataset: shared/cifar10-lossless
  train_split: 'train[:192]'
  val_split: 'test[:64]'
  epochs: 2
  batch_size: 64
  lr: 0.05
  model_ema: true
  model_ema_decay: 0.9
  threads: 1
  log_interval: 10
runs:
  - {name: resnet20_frelu.gpu_cifar10, share: 1}
  - {name: resnet20_relu.gpu_cifar10, share: 1, args: {epochs: 1}}
'''


@pytest.fixture(scope='session')
def gpu_zoo_returned(tmp_path_factory):
    """What a device call of the GPU zoo job brings back (its output folder), from a tiny plan run
    on the CPU as the device runs it."""
    root = tmp_path_factory.mktemp('gpu-zoo')
    plan = root / 'plan.yaml'
    plan.write_text(GPU_ZOO_PLAN)
    out = root / 'OUT'
    result = subprocess.run(
        [sys.executable, '-m', 'timm_frelu.cli', 'gpu-zoo', 'run', str(plan), '--output', str(out),
         '--time-budget', '600', '--device', 'cpu', '--part-size', str(GPU_ZOO_PART_SIZE), '--calibration-seconds', '1',
         '--work-dir', str(root / 'work')],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'No CUDA runtime' not in result.stderr  # a CPU run says nothing of CUDA
    return out
