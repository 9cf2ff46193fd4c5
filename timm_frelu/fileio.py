"""File helpers shared by the commands: hashing, YAML files the user names, and writes that never leave a
half-written file."""
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict

import yaml

from .errors import TimmFreluError


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


class YamlFileError(TimmFreluError, ValueError):
    """A YAML file named on the command line is missing, unreadable or not a mapping."""


def read_yaml_mapping(path: Path, what: str) -> Dict[str, Any]:
    """The mapping in YAML file ``path`` (empty for an empty file). ``what`` names the file's role
    (``'queue file'``) so that the error says which argument to fix."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise YamlFileError(f'No {what} at {path}: check the path (it is relative to {Path.cwd()}).') from None
    except (OSError, UnicodeDecodeError) as err:
        raise YamlFileError(f'Cannot read the {what} {path}: {err}') from None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, 'problem_mark', None)
        where = f' at line {mark.line + 1}, column {mark.column + 1}' if mark else ''
        problem = getattr(err, 'problem', None) or err
        raise YamlFileError(f'The {what} {path} is not valid YAML{where}: {problem}. Fix the file.') from None
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise YamlFileError(f'The {what} {path} holds a {type(spec).__name__}; it must be a mapping of keys to values.')
    return spec


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


def save_safetensors_atomic(tensors: Dict[str, Any], path: Path, metadata: Dict[str, str]) -> None:
    """Save ``tensors`` as a safetensors file through a temporary file beside ``path``."""
    from safetensors.torch import save_file
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
