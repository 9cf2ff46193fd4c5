"""What a folder's files have cost a git repository: every version ever committed, as git stores it."""
import subprocess
from pathlib import Path


def _git(args, cwd: Path, stdin: str = '') -> subprocess.CompletedProcess:
    return subprocess.run(['git', *args], cwd=cwd, input=stdin, capture_output=True, text=True)


def committed_bytes(folder: Path) -> int:
    """Bytes of git's object store taken by every version of every file committed under
    ``folder`` in any branch (compressed, as git keeps them); 0 outside a git work tree."""
    folder = Path(folder).resolve()
    existing = next(path for path in (folder, *folder.parents) if path.is_dir())
    try:
        top = _git(['rev-parse', '--show-toplevel'], existing)
    except FileNotFoundError:  # no git on this machine: nothing can have been committed with it
        return 0
    if top.returncode != 0:
        return 0
    root = Path(top.stdout.strip()).resolve()
    prefix = folder.relative_to(root).as_posix() + '/'
    listing = _git(['rev-list', '--objects', '--all', '--', prefix], root)
    blobs = [line.split(' ', 1)[0] for line in listing.stdout.splitlines()
             if ' ' in line and line.split(' ', 1)[1].startswith(prefix)]
    sizes = _git(['cat-file', '--batch-check=%(objecttype) %(objectsize:disk)'], root, '\n'.join(blobs))
    return sum(int(size) for kind, size in (line.split() for line in sizes.stdout.splitlines()) if kind == 'blob')
