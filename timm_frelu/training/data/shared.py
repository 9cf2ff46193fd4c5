"""The offline CIFAR-10 copies in the project's shared data folder (see its README).

The archives are read-only: each is checked against ``SHA256SUMS`` and unpacked once into the
cache folder, never next to itself.
"""
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, Tuple

from ...fileio import file_sha256
from ...pretrained import SOURCE_CHECKOUT
from .errors import DataError

SHARED_DATA_ENV = 'TIMM_FRELU_SHARED_DATA'
CACHE_ENV = 'TIMM_FRELU_CACHE'

# dataset name -> archive file; each unpacks to a folder of the archive's stem.
SHARED_ARCHIVES = {
    'cifar10-jpeg': 'cifar10-jpeg-q75.tar.xz',
    'cifar10-lossless': 'cifar10-lossless-subset.tar.xz',
}


def shared_data_dir() -> Path:
    """``$TIMM_FRELU_SHARED_DATA``, else ``shared/data`` beside this repository's checkout."""
    env = os.environ.get(SHARED_DATA_ENV)
    return Path(env) if env else SOURCE_CHECKOUT.parent / 'shared' / 'data'


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / '.cache' / 'timm_frelu'


def _expected_sums(folder: Path) -> Dict[str, str]:
    sums_file = folder / 'SHA256SUMS'
    if not sums_file.is_file():
        raise DataError(f'{sums_file} is missing, so the shared archives cannot be verified.')
    sums = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip('*').strip()] = digest
    return sums


def verified_archive(name: str) -> Tuple[Path, str]:
    """Path and SHA256 of the shared archive for dataset ``name``, after checking the SHA256."""
    folder = shared_data_dir()
    archive = folder / SHARED_ARCHIVES[name]
    if not archive.is_file():
        raise DataError(
            f'The shared archive for {name} was looked for at {archive} and is not there. '
            f'Set {SHARED_DATA_ENV} to the folder that holds {archive.name} and SHA256SUMS.')
    expected = _expected_sums(folder).get(archive.name)
    actual = file_sha256(archive)
    if expected != actual:
        raise DataError(
            f'{archive} is corrupt: its SHA256 is {actual}, SHA256SUMS says {expected}. '
            f'Restore the file from a good copy of the shared data folder.')
    return archive, actual


def move_into_place(unpacked: Path, target: Path) -> None:
    """Rename a finished unpack to ``target``; if another process (a second queue worker)
    got there first, its complete copy is kept and this one is left for the caller to remove."""
    try:
        os.replace(unpacked, target)
    except OSError:
        if not target.is_dir():
            raise


def unpacked_archive(archive: Path, sha: str) -> Path:
    """The folder a verified archive unpacks to, unpacking it into the cache on first use."""
    target = cache_dir() / 'shared' / f'{archive.name.split(".")[0]}-{sha[:12]}'
    if target.is_dir():
        return target / archive.name.split('.')[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    # Unpack beside the target and rename, so that a killed unpack never looks complete.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix='.unpack-'))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter='data')
        move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target / archive.name.split('.')[0]
