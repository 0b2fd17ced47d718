"""A local, Hugging Face Hub-compatible HTTP server for tests (test code, not product code).

No machine here reaches huggingface.co, so tests point the *real* ``huggingface_hub`` (2.4) / ``transformers`` /
``peft`` code paths at this server through ``HF_ENDPOINT``. Hand-written because huggingface_hub ships no server.

Endpoints (repo ids are always ``namespace/name``; ``{type}`` is ``models``, ``datasets`` or ``spaces``):

- ``GET  /api/whoami-v2``                            user, orgs and token role from ``Authorization: Bearer``
- ``POST /api/repos/create``, ``DELETE /api/repos/delete``   create (409 if it exists) / delete a repo
- ``POST /api/validate-yaml``                        always valid (``create_commit`` of a README.md calls it)
- ``GET  /api/{type}/{repo_id}[/revision/{rev}]``    repo info: ``sha``, ``siblings``, ``private``, ``sdk``
- ``GET  /api/{type}/{repo_id}/tree/{rev}[/{path}]`` list_repo_tree / list_repo_files (``recursive`` supported)
- ``POST /api/{type}/{repo_id}/paths-info/{rev}``    get_paths_info (used for copy operations)
- ``GET  /api/{type}/{repo_id}/refs``                list_repo_refs (only branch ``main``)
- ``GET  /api/{type}/{repo_id}/commits/{rev}``       list_repo_commits (newest first)
- ``POST /api/{type}/{repo_id}/preupload/{rev}``     every file is ``"regular"`` (anything else would go to Xet)
- ``POST /api/{type}/{repo_id}/commit/{rev}``        NDJSON commit: ``file`` / ``deletedFile`` / ``deletedFolder``
- ``HEAD|GET /[datasets/|spaces/]{repo_id}/resolve/{rev}/{path}``   file download (single ``Range`` supported)
- ``GET|POST|DELETE /api/spaces/{repo_id}/variables``  get/add/delete_space_variable (owner only, like the Hub)
- ``POST|DELETE /api/spaces/{repo_id}/secrets``      add/delete_space_secret (write-only: values never answered)
- ``GET /api/spaces/{repo_id}/runtime``, ``POST /api/spaces/{repo_id}/hardware``   get_space_runtime /
  request_space_hardware (the hardware asked for at creation, ``hardware`` in the create payload, or later)

Semantics copied from the real Hub: a new repo gets an "initial commit" holding ``.gitattributes`` (plus a
``README.md`` with the SDK for spaces); commits go to branch ``main`` only, and ``revision`` may be ``main`` or a
full commit sha; ``parentCommit`` that is not the head gives 412; errors carry ``X-Error-Code`` (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``) and ``X-Error-Message``; a missing file's 404 carries ``X-Repo-Commit``;
an unknown token gets 401 "Invalid credentials in Authorization header"; private or missing repos answer 401
(anonymous) / 404 (authenticated) with ``RepoNotFound``. Preupload returns each existing file's git blob ``oid``, so
huggingface_hub itself skips unchanged files (a re-upload of identical content creates no commit, as on the Hub).

Not implemented: LFS/Xet uploads, pull requests (``create_pr``), branches other than ``main``, tags, chunked
request bodies, pagination (everything fits in one page), model ids without a namespace (``gpt2``).

Test helpers on ``LocalHub``: ``inject_faults`` ("500"/"503"/any status, or "drop" = close the connection without
answering), ``requests`` (log of ``RequestRecord(method, path, status)``), ``count``, ``seed_repo``, ``files``,
``commit_ids``, ``add_token``, ``space_variables``, ``space_secrets``. The ``local_hub`` pytest fixture (function
scope) starts one server per test and points huggingface_hub/transformers at it with a fresh cache; see its docstring.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
GITATTRIBUTES = b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
INVALID_TOKEN = "Invalid credentials in Authorization header"


def git_blob_sha(data: bytes) -> str:
    """Git blob id of ``data``: what the Hub reports as ``oid``/ETag for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class HubError(Exception):
    """An HTTP error answer, with the Hub's ``X-Error-Code`` when it has one."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = {"error": message, **(body or {})}


@dataclass
class TokenInfo:
    user: str
    orgs: tuple[str, ...] = ()
    write: bool = True

    @property
    def namespaces(self) -> set[str]:
        return {self.user, *self.orgs}


@dataclass
class Commit:
    oid: str
    title: str
    message: str
    author: str
    date: str
    files: dict[str, str]  # full snapshot: path -> git blob sha (content lives in the blob store)


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None
    created_at: str
    commits: list[Commit] = field(default_factory=list)  # linear history of branch "main", oldest first
    variables: dict[str, dict[str, str]] = field(default_factory=dict)  # Space variables: key -> {value, ...}
    secrets: dict[str, str] = field(default_factory=dict)  # Space secrets: key -> value (never answered)
    hardware: str | None = None  # Space hardware requested (None: the Hub's default, cpu-basic)

    def resolve(self, rev: str) -> Commit:
        if rev == "main":
            return self.commits[-1]
        for commit in self.commits:
            if commit.oid == rev:
                return commit
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")


@dataclass
class RequestRecord:
    method: str
    path: str  # URL path without the query string, percent-decoded
    status: int | str  # HTTP status, or "drop" when the connection was closed without an answer
    injected: bool = False


@dataclass
class _Fault:
    path_substring: str
    kind: str
    method: str | None


class LocalHub:
    """In-process Hub: state in memory, file contents in a blob store under ``root``."""

    def __init__(self, root: Path, user: str = "test-user", token: str = "hf_local_test_write_token",
                 orgs: tuple[str, ...] = ("test-org",)):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.user, self.token = user, token
        self.tokens: dict[str, TokenInfo] = {}
        self.add_token(token, user, orgs, write=True)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[RequestRecord] = []
        self.hardware_requests: list[tuple[str, str]] = []  # (space id, flavor) per request_space_hardware
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self.url = ""

    # ------------------------------------------------------------------ test API
    def add_token(self, token: str, user: str, orgs: tuple[str, ...] = (), write: bool = True) -> None:
        """Register a valid token; ``write=False`` makes a read-only token (role "read")."""
        self.tokens[token] = TokenInfo(user, tuple(orgs), write)

    def inject_faults(self, path_substring: str, kinds: list[str] | tuple[str, ...] = ("500",),
                      count: int | None = None, method: str | None = None) -> None:
        """Make the next ``count`` (default ``len(kinds)``) requests whose path contains ``path_substring`` fail.

        The i-th failing request uses ``kinds[i % len(kinds)]``: an HTTP status such as "500" / "503" (answered
        with a JSON error), or "drop" (the connection is closed after reading the request, without any answer).
        """
        kinds = list(kinds)
        for kind in kinds:
            if kind != "drop" and not (kind.isdigit() and len(kind) == 3):
                raise ValueError(f"unknown fault kind {kind!r}: expected 'drop' or an HTTP status like '500'")
        with self._lock:
            for i in range(len(kinds) if count is None else count):
                self._faults.append(_Fault(path_substring, kinds[i % len(kinds)], method))

    def count(self, method: str | None = None, path_contains: str = "", status: int | str | None = None) -> int:
        """Number of logged requests matching method / path substring / status."""
        with self._lock:
            return sum(1 for r in self.requests if (method is None or r.method == method)
                       and path_contains in r.path and (status is None or r.status == status))

    def seed_repo(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model", private: bool = False,
                  sdk: str | None = None) -> str:
        """Create a repo (if needed) and commit ``files`` directly, without HTTP. Returns the commit sha."""
        with self._lock:
            repo = self.repos.get((repo_type, repo_id)) or self._create(repo_type, repo_id, private, sdk, self.user)
            snapshot = {**repo.commits[-1].files, **{p: self._put_blob(c) for p, c in files.items()}}
            return self._add_commit(repo, snapshot, "Seed files", "", self.user).oid

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Snapshot of a repo at ``revision``: {path: content}."""
        commit = self.repos[(repo_type, repo_id)].resolve(revision)
        return {path: self._blob(sha) for path, sha in commit.files.items()}

    def commit_ids(self, repo_id: str, repo_type: str = "model") -> list[str]:
        """Commit shas of branch main, oldest first (the first one is the Hub's "initial commit")."""
        return [c.oid for c in self.repos[(repo_type, repo_id)].commits]

    def space_variables(self, repo_id: str) -> dict[str, str]:
        """A Space's variables: {key: value}."""
        return {key: entry["value"] for key, entry in self.repos[("space", repo_id)].variables.items()}

    def space_secrets(self, repo_id: str) -> dict[str, str]:
        """A Space's secrets: {key: value} (the HTTP API never answers them; tests may read them here)."""
        return dict(self.repos[("space", repo_id)].secrets)

    def start(self, port: int = 0) -> "LocalHub":
        """Serve on 127.0.0.1:`port` (0: a free port) from a background thread; `url` says where."""
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="local-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # ------------------------------------------------------------------ storage
    def _put_blob(self, data: bytes) -> str:
        sha = git_blob_sha(data)
        path = self.root / "blobs" / sha
        if not path.exists():
            path.write_bytes(data)
        return sha

    def _blob(self, sha: str) -> bytes:
        return (self.root / "blobs" / sha).read_bytes()

    def _create(self, repo_type: str, repo_id: str, private: bool, sdk: str | None, author: str) -> Repo:
        repo = Repo(repo_type, repo_id, private, sdk, _now())
        self.repos[(repo_type, repo_id)] = repo
        # Like the Hub: every repo starts with a system "initial commit" (spaces also get a README with the SDK).
        files = {".gitattributes": self._put_blob(GITATTRIBUTES)}
        if repo_type == "space":
            readme = f"---\ntitle: {repo_id.split('/')[1]}\nsdk: {sdk}\napp_file: app.py\npinned: false\n---\n"
            files["README.md"] = self._put_blob(readme.encode())
        self._add_commit(repo, files, "initial commit", "", "system")
        return repo

    def _add_commit(self, repo: Repo, files: dict[str, str], title: str, message: str, author: str) -> Commit:
        parent = repo.commits[-1].oid if repo.commits else ""
        seed = json.dumps([repo.repo_type, repo.repo_id, parent, len(repo.commits), title, sorted(files.items())])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), title, message, author, _now(), dict(files))
        repo.commits.append(commit)
        return commit

    # ------------------------------------------------------------------ auth helpers
    def _who(self, headers: Any) -> TokenInfo | None:
        auth = headers.get("Authorization") or ""
        if not auth:
            return None
        info = self.tokens.get(auth.removeprefix("Bearer ").strip())
        if info is None:
            raise HubError(401, INVALID_TOKEN)
        return info

    def _repo(self, repo_type: str, repo_id: str, who: TokenInfo | None, write: bool = False) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        namespace = repo_id.split("/")[0]
        readable = repo is not None and (not repo.private or (who is not None and namespace in who.namespaces))
        if not readable:
            raise HubError(401 if who is None else 404, "Repository not found", "RepoNotFound")
        if write and not (who is not None and who.write and namespace in who.namespaces):
            raise HubError(403, f"You don't have the rights to write to {repo_type}s/{repo_id}")
        return repo

    # ------------------------------------------------------------------ routing
    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, dict, bytes]:
        """Answer one request: (status, headers, body). Raises HubError for error answers."""
        split = urlsplit(raw_path)
        query = parse_qs(split.query)
        # Split before decoding so that a quoted revision such as "refs%2Fpr%2F1" stays one segment.
        segs = [unquote(s) for s in split.path.strip("/").split("/")]
        who = self._who(headers)
        if segs[:1] == ["api"]:
            if segs[1:] == ["whoami-v2"] and method == "GET":
                return self._whoami(who)
            if segs[1:] == ["repos", "create"] and method == "POST":
                return self._create_repo(json.loads(body or b"{}"), who)
            if segs[1:] == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo(json.loads(body or b"{}"), who)
            if segs[1:] == ["validate-yaml"] and method == "POST":
                return _json({"errors": [], "warnings": []})
            if len(segs) >= 4 and segs[1] in REPO_TYPES:
                return self._repo_api(method, REPO_TYPES[segs[1]], f"{segs[2]}/{segs[3]}", segs[4:], query, body, who)
        else:
            repo_type = REPO_TYPES.get(segs[0]) if segs[0] in ("datasets", "spaces") else None
            rest = segs[1:] if repo_type else segs
            if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(repo_type or "model", f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]),
                                     headers, who)
        raise HubError(404, f"Not found: {method} {split.path}")

    def _whoami(self, who: TokenInfo | None) -> tuple[int, dict, bytes]:
        if who is None:
            raise HubError(401, INVALID_TOKEN)
        role = "write" if who.write else "read"
        return _json({"type": "user", "id": hashlib.sha1(who.user.encode()).hexdigest()[:24], "name": who.user,
                      "fullname": who.user, "email": f"{who.user}@example.com", "emailVerified": True,
                      "isPro": False, "canPay": False,
                      "orgs": [{"type": "org", "name": o, "fullname": o, "roleInOrg": role} for o in who.orgs],
                      "auth": {"type": "access_token", "accessToken": {"displayName": "local-test", "role": role}}})

    def _create_repo(self, payload: dict, who: TokenInfo | None) -> tuple[int, dict, bytes]:
        if who is None:
            raise HubError(401, "You must be authenticated to create a repo")
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or who.user
        repo_id = f"{namespace}/{payload.get('name')}"
        if repo_type not in URL_PREFIX or not payload.get("name"):
            raise HubError(400, f"Invalid repo type or name: {repo_type!r}, {payload.get('name')!r}")
        if not who.write or namespace not in who.namespaces:
            raise HubError(403, f"You don't have the rights to create a {repo_type} under the namespace {namespace}")
        url = f"{self.url}/{URL_PREFIX[repo_type]}{repo_id}"
        if repo_type == "space" and not payload.get("sdk"):
            raise HubError(400, "Spaces need an sdk")
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                # The Hub's 409 body carries the url: create_repo(exist_ok=True) returns it.
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}", body={"url": url})
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            repo = self._create(repo_type, repo_id, private, payload.get("sdk"), who.user)
            repo.hardware = payload.get("hardware") if repo_type == "space" else None
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, payload: dict, who: TokenInfo | None) -> tuple[int, dict, bytes]:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or (who.user if who else '')}/{payload.get('name')}"
        with self._lock:
            self._repo(repo_type, repo_id, who, write=True)
            del self.repos[(repo_type, repo_id)]
        return _json({})

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: list[str], query: dict, body: bytes,
                  who: TokenInfo | None) -> tuple[int, dict, bytes]:
        action, args = (rest[0], rest[1:]) if rest else (None, [])
        if method == "GET" and (action is None or (action == "revision" and len(args) == 1)):
            return self._info(repo_type, repo_id, args[0] if args else "main", query, who)
        if method == "GET" and action == "tree" and args:
            return self._tree(repo_type, repo_id, args[0], "/".join(args[1:]), query, who)
        if method == "GET" and action == "refs":
            repo = self._repo(repo_type, repo_id, who)
            ref = {"name": "main", "ref": "refs/heads/main", "targetCommit": repo.commits[-1].oid}
            return _json({"branches": [ref], "converts": [], "tags": [], "pullRequests": []})
        if method == "GET" and action == "commits" and len(args) == 1:
            repo = self._repo(repo_type, repo_id, who)
            head = repo.resolve(args[0])
            history = repo.commits[: repo.commits.index(head) + 1][::-1]
            return _json([{"id": c.oid, "title": c.title, "message": c.message, "authors": [{"user": c.author}],
                           "date": c.date} for c in history])
        if method == "POST" and action == "paths-info" and len(args) == 1:
            commit = self._repo(repo_type, repo_id, who).resolve(args[0])
            paths = parse_qs(body.decode()).get("paths", [])
            entries = [e for e in self._entries(commit, "", recursive=True) if e["path"] in paths]
            return _json(entries)
        if method == "POST" and action == "preupload" and len(args) == 1:
            return self._preupload(repo_type, repo_id, args[0], json.loads(body or b"{}"), who)
        if method == "POST" and action == "commit" and len(args) == 1:
            return self._commit(repo_type, repo_id, args[0], query, body, who)
        if repo_type == "space" and action in ("runtime", "hardware") and not args:
            return self._space_runtime(method, action, repo_id, json.loads(body or b"{}"), who)
        if repo_type == "space" and action in ("variables", "secrets") and not args:
            return self._space_settings(method, action, repo_id, json.loads(body or b"{}"), who)
        raise HubError(404, f"Not found: {method} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}")

    def _space_runtime(self, method: str, action: str, repo_id: str, payload: dict, who: TokenInfo | None):
        """A Space's runtime (its hardware; the stage is always BUILDING here) and hardware requests (owner only)."""
        repo = self._repo("space", repo_id, who, write=method == "POST")
        if method == "POST" and action == "hardware":
            if not payload.get("flavor"):
                raise HubError(400, "hardware requests need a flavor")
            repo.hardware = payload["flavor"]
            self.hardware_requests.append((repo_id, payload["flavor"]))
        elif not (method == "GET" and action == "runtime"):
            raise HubError(405, f"{method} is not allowed on a Space's {action}")
        return _json({"stage": "BUILDING", "hardware": {"current": None, "requested": repo.hardware or "cpu-basic"},
                      "storage": None, "gcTimeout": None, "replicas": None})

    def _space_settings(self, method: str, kind: str, repo_id: str, payload: dict, who: TokenInfo | None):
        """Space variables (GET/POST/DELETE answer all of them) and secrets (POST/DELETE, empty answer)."""
        repo = self._repo("space", repo_id, who, write=True)  # settings are the owner's, as on the Hub
        store: dict[str, Any] = repo.variables if kind == "variables" else repo.secrets
        if method == "POST":
            if not payload.get("key") or "value" not in payload:
                raise HubError(400, f"{kind} need a key and a value")
            entry = {"value": payload["value"], "description": payload.get("description"), "updatedAt": _now()}
            store[payload["key"]] = entry if kind == "variables" else payload["value"]
        elif method == "DELETE":
            store.pop(payload.get("key"), None)
        elif method != "GET" or kind == "secrets":
            raise HubError(405, f"{method} is not allowed on a Space's {kind}")
        return _json(dict(repo.variables) if kind == "variables" else {})

    def _info(self, repo_type: str, repo_id: str, rev: str, query: dict, who: TokenInfo | None):
        repo = self._repo(repo_type, repo_id, who)
        commit = repo.resolve(rev)
        with_blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = [{"rfilename": p, **({"size": self._size(s), "blobId": s} if with_blobs else {})}
                    for p, s in sorted(commit.files.items())]
        info = {"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id,
                "author": repo_id.split("/")[0], "sha": commit.oid, "lastModified": commit.date,
                "createdAt": repo.created_at, "private": repo.private, "gated": False, "disabled": False,
                "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                "usedStorage": sum(self._size(s) for s in commit.files.values())}
        if repo_type == "space":
            info["sdk"] = repo.sdk
        return _json(info)

    def _size(self, sha: str) -> int:
        return (self.root / "blobs" / sha).stat().st_size

    def _entries(self, commit: Commit, prefix: str, recursive: bool) -> list[dict]:
        """Tree entries under ``prefix`` (files and folders), like the Hub's /tree endpoint."""
        base = f"{prefix.rstrip('/')}/" if prefix else ""
        files, folders = [], set()
        for path, sha in sorted(commit.files.items()):
            if not path.startswith(base):
                continue
            parts = path[len(base):].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folders.add(base + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                files.append({"type": "file", "oid": sha, "size": self._size(sha), "path": path})
        dirs = [{"type": "directory", "oid": hashlib.sha1(f"{commit.oid}:{d}".encode()).hexdigest(), "path": d}
                for d in sorted(folders)]
        return dirs + files

    def _tree(self, repo_type: str, repo_id: str, rev: str, path: str, query: dict, who: TokenInfo | None):
        commit = self._repo(repo_type, repo_id, who).resolve(rev)
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        entries = self._entries(commit, path, recursive)
        if path and not entries:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        return _json(entries)

    def _preupload(self, repo_type: str, repo_id: str, rev: str, payload: dict, who: TokenInfo | None):
        commit = self._repo(repo_type, repo_id, who, write=True).resolve(rev)
        # Always "regular": with hf_xet installed, any other mode would send the bytes to a Xet CAS server.
        # "oid" of an existing file lets huggingface_hub drop unchanged files from the commit, as on the Hub.
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                  **({"oid": commit.files[f["path"]]} if f["path"] in commit.files else {})}
                 for f in payload.get("files", [])]
        return _json({"files": files, "commitOid": commit.oid})

    def _commit(self, repo_type: str, repo_id: str, rev: str, query: dict, body: bytes, who: TokenInfo | None):
        if query.get("create_pr", ["0"])[0] == "1":
            raise HubError(400, "Pull requests are not supported by the local test Hub")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "Commit payload must start with a header line")
        header = lines[0]["value"]
        with self._lock:  # check-and-commit must be atomic for parent_commit semantics
            repo = self._repo(repo_type, repo_id, who, write=True)
            if rev != "main":
                raise HubError(404, f"Invalid rev id: {rev} (only branch 'main' accepts commits)", "RevisionNotFound")
            head = repo.commits[-1]
            if header.get("parentCommit") and header["parentCommit"] != head.oid:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files)
            for op in lines[1:]:
                key, value = op.get("key"), op.get("value", {})
                path = value.get("path", "")
                if key == "file":
                    content = value["content"]
                    data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                    files[path] = self._put_blob(data)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    folder = path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(folder)]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del files[p]
                else:  # lfsFile needs an LFS/Xet store, which this server does not have
                    raise HubError(400, f"Unsupported commit operation {key!r} (local test Hub)")
            commit = self._add_commit(repo, files, header.get("summary", ""), header.get("description", ""),
                                      who.user if who else "anonymous")
        url = f"{self.url}/{URL_PREFIX[repo_type]}{repo_id}/commit/{commit.oid}"
        return _json({"success": True, "commitOid": commit.oid, "commitUrl": url, "hookOutput": "",
                      "pullRequestUrl": None})

    def _resolve(self, repo_type: str, repo_id: str, rev: str, path: str, headers: Any, who: TokenInfo | None):
        commit = self._repo(repo_type, repo_id, who).resolve(rev)
        if path not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        sha = commit.files[path]
        data = self._blob(sha)
        out = {"X-Repo-Commit": commit.oid, "ETag": f'"{sha}"', "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", headers.get("Range") or "")
        if match and (match[1] or match[2]):
            start = int(match[1]) if match[1] else max(len(data) - int(match[2]), 0)
            end = min(int(match[2]), len(data) - 1) if match[1] and match[2] else len(data) - 1
            if start >= len(data):
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            out["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, out, data[start : end + 1]
        return 200, out, data


def _json(obj: Any, status: int = 200) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP layer: read the body, apply injected faults, delegate to ``LocalHub.handle``, log."""

    hub: LocalHub
    protocol_version = "HTTP/1.0"  # one request per connection: no stale pooled connections, clean "drop" faults

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def _serve(self) -> None:
        hub, method = self.hub, self.command
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = unquote(urlsplit(self.path).path)
        with hub._lock:
            fault = next((f for f in hub._faults if f.path_substring in path
                          and (f.method is None or f.method == method)), None)
            if fault is not None:
                hub._faults.remove(fault)
        if fault is not None and fault.kind == "drop":
            hub.requests.append(RequestRecord(method, path, "drop", injected=True))
            self.close_connection = True  # nothing written: the client sees the connection closed
            return
        if fault is not None:
            status, headers, payload = _json({"error": f"Injected fault {fault.kind}"}, int(fault.kind))
        else:
            try:
                with hub._lock:  # requests are tiny; serialising them keeps the in-memory state simple
                    status, headers, payload = hub.handle(method, self.path, self.headers, body)
            except HubError as err:
                status, headers, payload = _json(err.body, err.status)
                headers.update(err.headers, **{"X-Error-Message": err.message})
                if err.code:
                    headers["X-Error-Code"] = err.code
            except Exception as err:  # a server bug must surface as a 500 with the reason, not a hang
                status, headers, payload = _json({"error": f"local hub crashed: {err!r}"}, 500)
        hub.requests.append(RequestRecord(method, path, status, injected=fault is not None))
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve


@pytest.fixture
def local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """A running ``LocalHub`` with huggingface_hub, transformers and peft pointed at it (function scope).

    Sets ``HF_ENDPOINT``, ``HF_TOKEN`` (= ``hub.token``, write access to ``hub.user`` and "test-org"),
    ``HF_HOME``/``HF_HUB_CACHE`` (fresh, under ``tmp_path``), unsets ``HF_HUB_OFFLINE``; patches the import-time
    copies in ``huggingface_hub.constants``, the module-level ``huggingface_hub.api`` and transformers' shared HfApi.
    ``datasets.config`` is patched only if ``datasets`` is already imported. Everything is restored afterwards.
    """
    import huggingface_hub
    from huggingface_hub import constants, hf_api

    hub = LocalHub(tmp_path / "local_hub_storage").start()
    hf_home = tmp_path / "hf_home"
    cache = hf_home / "hub"
    cache.mkdir(parents=True)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(cache),
           "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for name, value in {
        "ENDPOINT": hub.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
    }.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)  # huggingface_hub.create_repo & co. are bound to it
    try:  # transformers caches one HfApi (with the endpoint of its creation time): force a fresh one
        import transformers.utils.hub as transformers_hub

        monkeypatch.setattr(transformers_hub, "_hf_api", None)
    except ImportError:
        pass
    if "datasets.config" in sys.modules:
        datasets_config = sys.modules["datasets.config"]
        monkeypatch.setattr(datasets_config, "HF_ENDPOINT", hub.url)
        monkeypatch.setattr(datasets_config, "HUB_DATASETS_URL", hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}")
        monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", False)
    huggingface_hub.close_session()  # new HTTP client: picks up NO_PROXY, no pooled connections from older tests
    try:
        yield hub
    finally:
        hub.stop()
        huggingface_hub.close_session()


def main() -> None:
    """`python tests/hub_server.py [--port N] [--root DIR]`: the server on its own, for trying the product's Hub
    paths by hand (docs/arena.md's walk-through). State lives as long as the process; Ctrl-C stops it."""
    import argparse
    import tempfile
    import time

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=8990)
    parser.add_argument("--root", type=Path, default=None, help="blob store folder (default: a temporary one)")
    args = parser.parse_args()
    hub = LocalHub(args.root or Path(tempfile.mkdtemp(prefix="local-hub-"))).start(args.port)
    print(f"export HF_ENDPOINT={hub.url} HF_TOKEN={hub.token} HF_HUB_OFFLINE=0  # user {hub.user!r}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
