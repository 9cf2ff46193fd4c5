"""Finding a pretrained config's weights file, shipped or downloaded, and checking its SHA256."""
from pathlib import Path
from typing import Optional

from timm.models import PretrainedCfg

from ..errors import TimmFreluError
from ..fileio import file_sha256
from .manifest import find_weights
from .names import RESULTS_FILENAME, WEIGHTS_FILENAME, published_sha256


class PretrainedWeightsError(TimmFreluError, RuntimeError):
    """Pretrained weights that do not exist, cannot be fetched, or fail their SHA256 check; the
    command-line tools report it in one line."""


class WeightsNotFound(PretrainedWeightsError):
    pass


def verify_weights(path: Path, expected: Optional[str], publisher: str) -> None:
    """Raise unless ``path`` hashes to ``expected`` (when there is an expectation), which
    ``publisher`` (a file, or the manifest) publishes."""
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise PretrainedWeightsError(
            f'{path} has SHA256 {actual}, but {publisher} publishes {expected}: the file is corrupt or was '
            f'changed. Delete it and download or restore it again.')


def _download(cfg: PretrainedCfg) -> Path:
    """The config's Hub weights, checked against this install's manifest, or for weights it does
    not list, against the ``results.json`` of the same repo."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
    try:
        path = Path(hf_hub_download(cfg.hf_hub_id, WEIGHTS_FILENAME))
        entry = find_weights(cfg.architecture, cfg.tag) if cfg.architecture and cfg.tag else None
        if entry is not None and entry.hf_hub_id == cfg.hf_hub_id:
            expected, publisher = entry.sha256, "timm_frelu's manifest of published weights"
        else:
            publisher = f'{cfg.hf_hub_id}/{RESULTS_FILENAME}'
            try:
                expected = published_sha256(Path(hf_hub_download(cfg.hf_hub_id, RESULTS_FILENAME)).parent)
            except EntryNotFoundError:
                expected = None
    except (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled) as err:
        reason = str(err).strip().splitlines()[0]
        raise WeightsNotFound(
            f'the Hugging Face Hub repo {cfg.hf_hub_id} could not be used ({type(err).__name__}: {reason})') from None
    verify_weights(path, expected, publisher)
    return path


def resolve_weights(cfg: PretrainedCfg) -> Path:
    """The local, verified weights file of a pretrained config: a shipped or given file (checked
    against the ``results.json`` beside it, when there is one), a ``local-dir:`` folder, or a
    download from the config's Hub repo."""
    if cfg.source == 'local-dir':
        path = Path(cfg.file) / WEIGHTS_FILENAME
    elif cfg.file:
        path = Path(cfg.file)
    elif cfg.hf_hub_id:
        return _download(cfg)
    else:
        raise WeightsNotFound('the config names no weights')
    if not path.is_file():
        raise WeightsNotFound(f'{path} does not exist')
    verify_weights(path, published_sha256(path.parent), str(path.parent / RESULTS_FILENAME))
    return path
