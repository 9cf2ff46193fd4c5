"""Where the zoo's weights live, and the integrity check on every load.

A published checkpoint folder ``<name>.<tag>/`` holds ``model.safetensors`` and a
``results.json`` whose ``weights_sha256`` is the hash of that exact file. The same folder is
shipped in this repository's ``checkpoints/`` and pushed to the Hub repo ``timm-frelu/<name>.<tag>``.
Before weights are loaded, their SHA256 is compared with the published one.
"""
import json
import os
from pathlib import Path
from typing import Optional

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
from timm.models import PretrainedCfg

from ..fileio import file_sha256

HF_HUB_ORG = 'timm-frelu'

# A source checkout keeps published weights in <repo>/checkpoints/<name>.<tag>/; installs from a
# wheel, or users with their own copy, point TIMM_FRELU_CHECKPOINTS at such a folder.
CHECKPOINTS_ENV = 'TIMM_FRELU_CHECKPOINTS'
WEIGHTS_FILENAME = 'model.safetensors'
RESULTS_FILENAME = 'results.json'


def checkpoints_dir() -> Path:
    return Path(os.environ.get(CHECKPOINTS_ENV) or Path(__file__).resolve().parents[2] / 'checkpoints')


def hub_repo_id(name: str, tag: str) -> str:
    return f'{HF_HUB_ORG}/{name}.{tag}'


def shipped_weights(name: str, tag: str) -> Optional[str]:
    """Path of the weights file shipped for ``name.tag``, or None when there is none."""
    path = checkpoints_dir() / f'{name}.{tag}' / WEIGHTS_FILENAME
    return str(path) if path.is_file() else None


def published_sha256(folder: Path) -> Optional[str]:
    results = folder / RESULTS_FILENAME
    return json.loads(results.read_text()).get('weights_sha256') if results.is_file() else None


def verify_weights(path: Path) -> None:
    """Raise unless ``path`` hashes to the SHA256 published beside it (when one is)."""
    expected = published_sha256(path.parent)
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise RuntimeError(
            f'{path} has SHA256 {actual}, but {path.parent / RESULTS_FILENAME} publishes {expected}: the file is '
            f'corrupt or was changed. Delete it and download or restore it again.')


class WeightsNotFound(RuntimeError):
    pass


def pretrained_weights(cfg: PretrainedCfg) -> Path:
    """The local, verified weights file for a pretrained config: a shipped or given file, a
    ``local-dir:`` folder, or a download from the config's Hub repo."""
    if cfg.source == 'local-dir':
        path = Path(cfg.file) / WEIGHTS_FILENAME
    elif cfg.file:
        path = Path(cfg.file)
    elif cfg.hf_hub_id:
        try:
            try:  # the published hash comes from the same repo and revision as the weights
                hf_hub_download(cfg.hf_hub_id, RESULTS_FILENAME)
            except EntryNotFoundError:
                pass
            path = Path(hf_hub_download(cfg.hf_hub_id, WEIGHTS_FILENAME))
        except (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled) as err:
            reason = str(err).strip().splitlines()[0]
            raise WeightsNotFound(
                f'the Hugging Face Hub repo {cfg.hf_hub_id} could not be used ({type(err).__name__}: {reason})') from None
    else:
        raise WeightsNotFound('the config names no weights')
    if not path.is_file():
        raise WeightsNotFound(f'{path} does not exist')
    verify_weights(path)
    return path
