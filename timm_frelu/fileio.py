"""File helpers shared by the commands: hashing, and writes that never leave a half-written file."""
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    tmp.write_text(text)
    os.replace(tmp, path)


def copy_file_atomic(source: Path, target: Path) -> None:
    """Copy to a temporary file beside ``target`` and rename it over ``target``."""
    target = Path(target)
    tmp = target.with_name(f'.{target.name}.tmp{os.getpid()}')
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + '\n')
