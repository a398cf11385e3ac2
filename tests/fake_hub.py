"""Test helpers for the Hub: a hand-built Hugging Face cache, and a local HTTP server that speaks
the part of the Hub's file protocol huggingface_hub 2.x uses to download a model.

The server implements exactly the requests `hub.download` makes through huggingface_hub
(read from huggingface_hub/hf_api.py `model_info` and file_download.py `hf_hub_download` /
`get_hf_file_metadata`):

    GET  /api/models/{org}/{name}/revision/{rev}   -> JSON {"id", "sha", "siblings": [{"rfilename"}]}
    HEAD /{org}/{name}/resolve/{rev}/{file}        -> regular file: 200, ETag (git blob sha1), X-Repo-Commit,
                                                      Content-Length
                                                      LFS file (weights): 302, Location (the "CDN"),
                                                      X-Linked-Etag (sha256), X-Linked-Size, X-Repo-Commit
    GET  /{org}/{name}/resolve/{rev}/{file}        -> the same, with the body for regular files
    GET  /lfs/{sha256}                             -> the LFS content, on a second server (another port,
                                                      so huggingface_hub treats it as a CDN, as on the Hub)

Errors carry the Hub's X-Error-Code header (RepoNotFound, RevisionNotFound, EntryNotFound), which
is how huggingface_hub tells them apart. Every request is logged. Both servers listen on 127.0.0.1.

Run as `python tests/fake_hub.py` it is a worker: it reads one JSON command per line from stdin,
loads the model with `from_pretrained` and answers one `RESULT {json}` line. The download
tests drive it in a subprocess whose HF_ENDPOINT points at the server: huggingface_hub reads
HF_ENDPOINT once, at import time, so it must be set before the process starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin")  # stored in git-LFS on the Hub (weights); the rest is plain git


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file: what the Hub sends as ETag for non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def etag_of(name: str, data: bytes) -> str:
    """The cache blob name huggingface_hub uses: sha256 for LFS files, git sha1 otherwise."""
    return hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) else git_blob_sha1(data)


def commit_sha(files: dict[str, bytes], salt: str = "") -> str:
    h = hashlib.sha1(salt.encode())
    for name in sorted(files):
        h.update(name.encode() + b"\0" + etag_of(name, files[name]).encode())
    return h.hexdigest()


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def add_to_cache(root: Path, repo_id: str, files: dict[str, bytes], refs: list[str] = ()) -> str:
    """Write files into a Hub cache the way huggingface_hub does: blobs/<etag>, snapshots/<sha>/<name>
    as a RELATIVE symlink to the blob, refs/<name> holding the sha (no newline). Returns the sha."""
    repo = Path(root) / ("models--" + repo_id.replace("/", "--"))
    sha = commit_sha(files, salt=repo_id)
    for name, data in files.items():
        blob = repo / "blobs" / etag_of(name, data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = repo / "snapshots" / sha / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(sha)
    return sha


def tree_state(root: Path) -> dict[str, tuple]:
    """Everything under root: path -> ("dir",) | ("link", target) | ("file", sha256 of contents)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                state[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                state[rel] = ("dir",)
            else:
                state[rel] = ("file", hashlib.sha256(Path(p).read_bytes()).hexdigest())
    return state


# ----------------------------------------------------------------------------- the server


class FakeHub:
    """repos: repo_id -> {"branches": {name: sha}, "commits": {sha: {filename: bytes}}}."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.log: list[tuple[str, str]] = []  # (method, path), in arrival order
        self.truncate: dict[str, int] = {}  # LFS sha256 -> bytes actually sent (a download cut short)
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    def add(self, repo_id: str, branches: list[str], files: dict[str, bytes]) -> str:
        repo = self.repos.setdefault(repo_id, {"branches": {}, "commits": {}})
        sha = commit_sha(files, salt=repo_id)
        repo["commits"][sha] = dict(files)
        for b in branches:
            repo["branches"][b] = sha
        return sha

    def lfs(self, sha256: str) -> bytes | None:
        for repo in self.repos.values():
            for files in repo["commits"].values():
                for name, data in files.items():
                    if name.endswith(LFS_SUFFIXES) and hashlib.sha256(data).hexdigest() == sha256:
                        return data
        return None

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.log.append((method, path))

    def take_log(self) -> list[tuple[str, str]]:
        with self._lock:
            log, self.log = self.log, []
        return log

    def start(self) -> str:
        hub = _server(self, _HubHandler)
        cdn = _server(self, _CdnHandler)
        self.cdn_url = f"http://127.0.0.1:{cdn.server_address[1]}"
        self.url = f"http://127.0.0.1:{hub.server_address[1]}"
        return self.url

    def stop(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()


def _server(hub: FakeHub, handler) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # loopback only, any free port
    server.daemon_threads = True
    server.hub = hub
    hub._servers.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status: int, code: str, message: str, extra: dict | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.reply(
            status,
            {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json", **(extra or {})},
            body,
        )


class _HubHandler(_Handler):
    def do_GET(self):
        self.route()

    def do_HEAD(self):
        self.route()

    def route(self):
        path = urlsplit(self.path).path
        self.hub.record(self.command, path)
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "revision" and self.command == "GET":
            return self.model_info(f"{parts[2]}/{parts[3]}", parts[5])
        if len(parts) >= 5 and parts[2] == "resolve":
            return self.resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        self.error(404, "NotFound", f"no route for {self.command} {path}")

    def commit(self, repo_id: str, revision: str) -> tuple[str, dict] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self.error(404, "RepoNotFound", "Repository not found")
            return None
        sha = repo["branches"].get(revision, revision)
        if sha not in repo["commits"]:
            self.error(404, "RevisionNotFound", "Invalid rev id: " + revision)
            return None
        return sha, repo["commits"][sha]

    def model_info(self, repo_id: str, revision: str):
        found = self.commit(repo_id, revision)
        if found:
            sha, files = found
            body = json.dumps(
                {
                    "_id": sha[:24],
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": sha,
                    "private": False,
                    "siblings": [{"rfilename": n} for n in sorted(files)],
                }
            ).encode()
            self.reply(200, {"Content-Type": "application/json"}, body)

    def resolve(self, repo_id: str, revision: str, filename: str):
        found = self.commit(repo_id, revision)
        if not found:
            return
        sha, files = found
        if filename not in files:
            return self.error(404, "EntryNotFound", f"{filename} does not exist", {"X-Repo-Commit": sha})
        data = files[filename]
        if filename.endswith(LFS_SUFFIXES):
            digest = hashlib.sha256(data).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\nsize {len(data)}\n"
            return self.reply(
                302,
                {
                    "Location": f"{self.hub.cdn_url}/lfs/{digest}",
                    "X-Repo-Commit": sha,
                    "X-Linked-Etag": f'"{digest}"',
                    "X-Linked-Size": str(len(data)),
                    "ETag": f'"{git_blob_sha1(pointer.encode())}"',
                },
            )
        self.reply(
            200,
            {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": sha, "Content-Type": "application/octet-stream"},
            data,
        )


class _CdnHandler(_Handler):
    def do_GET(self):
        path = urlsplit(self.path).path
        self.hub.record("CDN GET", path)
        data = self.hub.lfs(path.rsplit("/", 1)[-1]) if path.startswith("/lfs/") else None
        if data is None:
            return self.reply(404, {}, b"not found")
        cut = self.hub.truncate.get(path.rsplit("/", 1)[-1])
        if cut is not None:  # the connection delivers only part of the file
            data = data[:cut]
        self.reply(200, {"Content-Type": "application/octet-stream"}, data)


# ----------------------------------------------------------------------------- the worker


def _worker() -> None:
    import sys
    import warnings

    import torch

    from neox_mini import from_pretrained

    for line in sys.stdin:
        cmd = json.loads(line)
        os.environ.update(cmd.get("env", {}))
        for k in cmd.get("unset", []):
            os.environ.pop(k, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model = from_pretrained(cmd["name"], revision=cmd.get("revision"))
                with torch.no_grad():
                    logits = model(torch.tensor([cmd.get("ids", [1, 2, 3])]))
                result = {"ok": True, "provenance": model.provenance, "logits_sum": float(logits.double().sum())}
            except Exception as e:
                result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        result["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    _worker()
