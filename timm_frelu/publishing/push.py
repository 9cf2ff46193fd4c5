"""Upload a published checkpoint folder to the Hugging Face Hub as one commit.

The repo is created if needed; then every file of the folder goes up in a single commit that
also deletes files the folder no longer has, so the repo mirrors the folder, model card
included (timm's ``push_to_hf_hub`` keeps an existing README). A commit is atomic on the Hub:
a failed push leaves the repo as it was. Transient failures (network errors, 5xx) are retried
with exponential backoff.
"""
import os
import time
from pathlib import Path
from typing import Callable, List, Optional, TypeVar

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

try:  # the HTTP client of huggingface_hub 2.x, and of 1.x
    from httpx2 import TransportError
except ImportError:
    from httpx import TransportError

from ..errors import TimmFreluError
from ..fileio import file_sha256
from ..pretrained import HF_HUB_ORG, RESULTS_FILENAME, WEIGHTS_FILENAME, published_sha256

REQUIRED_FILES = (WEIGHTS_FILENAME, 'config.json', RESULTS_FILENAME, 'README.md')
T = TypeVar('T')


class PushError(TimmFreluError, RuntimeError):
    pass


def check_folder(folder: Path) -> List[Path]:
    """The folder's files, after checking that it is complete and its weights match results.json."""
    if not folder.is_dir():
        raise PushError(f'{folder} is not a folder; push a checkpoint folder made by `timm-frelu publish`.')
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise PushError(f'{folder} lacks {", ".join(missing)}; re-create it with `timm-frelu publish`.')
    expected, actual = published_sha256(folder), file_sha256(folder / WEIGHTS_FILENAME)
    if expected != actual:
        raise PushError(f'{folder / WEIGHTS_FILENAME} has SHA256 {actual} but {RESULTS_FILENAME} says {expected}: '
                        'the weights changed after they were evaluated. Re-run `timm-frelu publish`.')
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith('.'))


def _with_retries(action: Callable[[], T], what: str, attempts: int, base_delay: float) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except OfflineModeIsEnabled:
            raise PushError('HF_HUB_OFFLINE is set, so nothing can be pushed; unset it and run the push again.') from None
        except HfHubHTTPError as err:
            status = err.response.status_code if err.response is not None else None
            if status in (401, 403):
                raise PushError(f'The Hub refused the token while trying to {what} ({status}): use a token with '
                                'write access to the repo (HF_TOKEN, or `hf auth login`).') from None
            if status is not None and status < 500 and status != 429:
                raise PushError(f'Could not {what}: {str(err).splitlines()[0]}') from None
            error = err
        except (TransportError, ConnectionError) as err:
            error = err
        if attempt == attempts:
            raise PushError(f'Could not {what} after {attempts} attempts ({type(error).__name__}: '
                            f'{str(error).splitlines()[0] if str(error) else ""}). Nothing was committed: the Hub repo is unchanged. Run the push again.') from None
        time.sleep(base_delay * 2 ** (attempt - 1))


def push(
        folder: Path,
        repo_id: Optional[str] = None,
        endpoint: Optional[str] = None,
        token: Optional[str] = None,
        revision: Optional[str] = None,
        private: bool = False,
        dry_run: bool = False,
        attempts: int = 4,
        base_delay: float = 1.0,
) -> Optional[str]:
    """Push ``folder`` to ``repo_id`` (default ``timm-frelu/<folder name>``); returns the commit URL."""
    folder = Path(folder)
    files = check_folder(folder)
    repo_id = repo_id or f'{HF_HUB_ORG}/{folder.name}'
    endpoint = endpoint or os.environ.get('HF_ENDPOINT') or 'https://huggingface.co'
    if dry_run:
        print(f'would push {len(files)} files as one commit to {endpoint}/{repo_id} (revision {revision or "main"}):')
        for path in files:
            print(f'  {path.name:<20} {path.stat().st_size:>12,d} bytes  sha256 {file_sha256(path)}')
        return None
    token = token or get_token()
    if not token:
        raise PushError('No Hugging Face token: set HF_TOKEN, or log in with `hf auth login`.')
    api = HfApi(endpoint=endpoint, token=token)
    _with_retries(lambda: api.create_repo(repo_id, exist_ok=True, private=private), f'create {repo_id}', attempts, base_delay)
    commit = _with_retries(
        lambda: api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, delete_patterns='*',
                                  ignore_patterns='.*', commit_message=f'Publish {folder.name}'),
        f'commit to {repo_id}', attempts, base_delay)
    return str(commit)
