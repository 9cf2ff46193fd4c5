import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, List

# No test may reach the internet; the hub client reads this when it is first imported.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
# The test Hub server speaks the classic LFS upload protocol, not Xet.
os.environ['HF_HUB_DISABLE_XET'] = '1'
# Unpacked archives and decoded tensors go to a cache of this test session, not the user's.
os.environ['TIMM_FRELU_CACHE'] = tempfile.mkdtemp(prefix='timm-frelu-test-cache-')

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import timm_frelu  # noqa: E402,F401  registers the models and the activation


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


def kill_when(cmd: List[str], ready: Callable[[], bool], settle: float = 0.0, timeout: float = 300) -> None:
    """Start ``cmd``, wait until ``ready()``, then ``kill -9`` it (after ``settle`` seconds)."""
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and process.poll() is None and not ready():
            time.sleep(0.1)
        time.sleep(settle)
        assert process.poll() is None, 'the process ended before it could be killed'
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
