"""A small Hugging Face Hub server for tests: the routes the unmodified huggingface_hub client
uses to create a repo, commit files through the classic LFS path (HF_HUB_DISABLE_XET=1), list
and download them.

It is strict: any other route gets 404 and is logged, and every request is logged so that tests
can assert the sequence. Failures can be switched on to test the client's error paths.
"""
import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = ('.safetensors', '.bin', '.pth', '.png', '.tar')


@dataclass
class Repo:
    commits: List[str] = field(default_factory=list)
    files: Dict[str, bytes] = field(default_factory=dict)  # at the head commit


@dataclass
class Failures:
    """Switches for error paths; each counter is the number of requests left to fail."""
    commit_500: int = 0
    lfs_put_drop: int = 0


class HubState:
    def __init__(self, tokens: Tuple[str, ...]) -> None:
        self.tokens = set(tokens)
        self.repos: Dict[str, Repo] = {}
        self.lfs: Dict[str, bytes] = {}
        self.log: List[Tuple[str, str, int]] = []
        self.failures = Failures()
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    state: HubState

    def log_message(self, *args) -> None:  # keep test output clean; requests go to state.log
        pass

    # --- plumbing
    def _body(self) -> bytes:
        length = int(self.headers.get('Content-Length') or 0)
        return self.rfile.read(length) if length else b''

    def _send(self, status: int, payload=None, headers: Optional[Dict[str, str]] = None, raw: Optional[bytes] = None,
              error_code: Optional[str] = None) -> None:
        body = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b'')
        self.send_response(status)
        self.send_header('Content-Type', 'application/octet-stream' if raw is not None else 'application/json')
        self.send_header('Content-Length', str(len(body)))
        if error_code:
            self.send_header('X-Error-Code', error_code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)
        self.state.log.append((self.command, urlparse(self.path).path, status))

    def _error(self, status: int, message: str, error_code: Optional[str] = None) -> None:
        self._send(status, {'error': message}, error_code=error_code)

    def _authorized(self) -> bool:
        auth = self.headers.get('Authorization', '')
        return auth.startswith('Bearer ') and auth[len('Bearer '):] in self.state.tokens

    def _require_token(self) -> bool:
        if not self._authorized():
            self._error(401, 'Invalid credentials in Authorization header')
            return False
        return True

    # --- routing
    ROUTES = [
        ('POST', r'/api/repos/create', '_create_repo'),
        ('POST', r'/api/validate-yaml', '_validate_yaml'),
        ('POST', r'/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)', '_preupload'),
        ('POST', r'/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch', '_lfs_batch'),
        ('PUT', r'/lfs-upload/(?P<oid>[0-9a-f]{64})', '_lfs_put'),
        ('POST', r'/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)', '_commit'),
        ('GET', r'/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?P<sub>/.*)?', '_tree'),
        ('GET', r'/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)', '_revision'),
        ('HEAD', r'/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)', '_resolve'),
        ('GET', r'/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)', '_resolve'),
    ]

    def _dispatch(self) -> None:
        path = unquote(urlparse(self.path).path)
        for method, pattern, handler in self.ROUTES:
            match = re.fullmatch(pattern, path)
            if method == self.command and match:
                with self.state.lock:
                    getattr(self, handler)(**match.groupdict())
                return
        self._body()
        self._error(404, f'unknown route {self.command} {path}')

    do_GET = do_POST = do_PUT = do_HEAD = _dispatch

    # --- handlers
    def _create_repo(self) -> None:
        body = json.loads(self._body() or b'{}')
        if not self._require_token():
            return
        repo_id = f"{body.get('organization')}/{body['name']}" if body.get('organization') else body['name']
        if repo_id in self.state.repos:
            self._send(409, {'error': 'You already created this model repo', 'url': f'http://{self.headers["Host"]}/{repo_id}'})
            return
        self.state.repos[repo_id] = Repo()
        self._send(200, {'url': f'http://{self.headers["Host"]}/{repo_id}', 'name': repo_id})

    def _validate_yaml(self) -> None:
        self._body()
        self._send(200, {'errors': [], 'warnings': []})

    def _repo_or_404(self, repo: str) -> Optional[Repo]:
        if repo not in self.state.repos:
            self._error(404, 'Repository not found', error_code='RepoNotFound')
            return None
        return self.state.repos[repo]

    def _preupload(self, repo: str, rev: str) -> None:
        body = json.loads(self._body())
        if not self._require_token() or self._repo_or_404(repo) is None:
            return
        files = [dict(path=f['path'], uploadMode='lfs' if f['path'].endswith(LFS_SUFFIXES) else 'regular',
                      shouldIgnore=False, oid=None) for f in body['files']]
        self._send(200, {'files': files, 'commitOid': None})

    def _lfs_batch(self, repo: str) -> None:
        body = json.loads(self._body())
        if not self._require_token() or self._repo_or_404(repo) is None:
            return
        objects = []
        for obj in body['objects']:
            entry = dict(oid=obj['oid'], size=obj['size'], authenticated=True)
            if obj['oid'] not in self.state.lfs:
                entry['actions'] = {'upload': {'href': f'http://{self.headers["Host"]}/lfs-upload/{obj["oid"]}'}}
            objects.append(entry)
        self._send(200, {'transfer': 'basic', 'objects': objects})

    def _lfs_put(self, oid: str) -> None:
        if self.state.failures.lfs_put_drop:
            self.state.failures.lfs_put_drop -= 1
            self.state.log.append(('PUT', f'/lfs-upload/{oid}', 0))
            self.close_connection = True
            self.connection.shutdown(2)  # the connection breaks mid-upload
            return
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            self._error(400, 'object content does not match its oid')
            return
        self.state.lfs[oid] = data
        self._send(200, {})

    def _commit(self, repo: str, rev: str) -> None:
        lines = [json.loads(line) for line in self._body().decode().splitlines() if line.strip()]
        if not self._require_token():
            return
        target = self._repo_or_404(repo)
        if target is None:
            return
        if self.state.failures.commit_500:
            self.state.failures.commit_500 -= 1
            self._error(500, 'Internal Error - We\'re working hard to fix this as soon as possible!')
            return
        files = dict(target.files)
        for line in lines:
            key, value = line['key'], line['value']
            if key == 'file':
                files[value['path']] = base64.b64decode(value['content'])
            elif key == 'lfsFile':
                if value['oid'] not in self.state.lfs:
                    self._error(400, f"LFS object {value['oid']} was never uploaded")
                    return
                files[value['path']] = self.state.lfs[value['oid']]
            elif key == 'deletedFile':
                files.pop(value['path'], None)
        commit = hashlib.sha1(json.dumps([len(target.commits), sorted(files)]).encode()
                              + b''.join(files[k] for k in sorted(files))).hexdigest()
        target.files = files
        target.commits.append(commit)
        self._send(200, {'commitUrl': f'http://{self.headers["Host"]}/{repo}/commit/{commit}', 'commitOid': commit,
                         'pullRequestUrl': None})

    def _tree(self, repo: str, rev: str, sub: Optional[str] = None) -> None:
        target = self._repo_or_404(repo)
        if target is None:
            return
        entries = []
        for path, data in sorted(target.files.items()):
            entry = dict(type='file', path=path, size=len(data), oid=hashlib.sha1(data).hexdigest())
            if path.endswith(LFS_SUFFIXES):
                entry['lfs'] = dict(oid=hashlib.sha256(data).hexdigest(), size=len(data), pointerSize=134)
            entries.append(entry)
        self._send(200, entries)

    def _revision(self, repo: str, rev: str) -> None:
        target = self._repo_or_404(repo)
        if target is None:
            return
        if not target.commits:
            self._error(404, 'Revision not found', error_code='RevisionNotFound')
            return
        self._send(200, dict(id=repo, modelId=repo, sha=target.commits[-1], private=False,
                             siblings=[dict(rfilename=p) for p in sorted(target.files)]))

    def _resolve(self, repo: str, rev: str, file: str) -> None:
        target = self._repo_or_404(repo)
        if target is None:
            return
        if not target.commits or rev not in ('main', target.commits[-1]):
            self._error(404, 'Revision not found', error_code='RevisionNotFound')
            return
        if file not in target.files:
            self._error(404, 'Entry not found', error_code='EntryNotFound')
            return
        data = target.files[file]
        headers = {'X-Repo-Commit': target.commits[-1], 'ETag': f'"{hashlib.sha256(data).hexdigest()}"'}
        if file.endswith(LFS_SUFFIXES):
            headers.update({'X-Linked-Etag': f'"{hashlib.sha256(data).hexdigest()}"', 'X-Linked-Size': str(len(data))})
        self._send(200, raw=data, headers=headers)


class HubServer:
    """``with HubServer(tokens=('secret',)) as hub: ... hub.endpoint ...``"""

    def __init__(self, tokens: Tuple[str, ...] = ('hf_test_token',)) -> None:
        self.state = HubState(tokens)
        handler = type('Handler', (_Handler,), {'state': self.state})
        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f'http://127.0.0.1:{self.httpd.server_address[1]}'

    def __enter__(self) -> 'HubServer':
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def routes(self) -> List[str]:
        """The log as 'METHOD /path -> status' lines, API paths generalised."""
        return [f'{method} {path} {status}' for method, path, status in self.state.log]
