"""A Hugging Face Hub and a download server on 127.0.0.1, standing in for the network: huggingface_hub and
torch.hub talk to it through the code paths a user with a network runs (HF_ENDPOINT, an http URL)."""
from __future__ import annotations

import hashlib
import io
import threading
import dataclasses
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import _http as hf_http
from safetensors.torch import save

import resnets
from resnets.hub.catalog import catalog

URL_TEMPLATE = "/{repo_id}/resolve/{revision}/{filename}"  # huggingface_hub's, after the endpoint


def commit_of(revision: str) -> str:
    """The commit hash a revision (a branch, a tag) is at: any 40 hex digits of its own will do."""
    return hashlib.sha1(revision.encode()).hexdigest()


@dataclass
class FakeHub:
    """What the server serves: Hub files by repo and "revision/file name", plain files by URL path."""

    url: str = ""
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    truncated: set[str] = field(default_factory=set)  # paths whose next body stops halfway: a dropped connection
    not_lfs: set[str] = field(default_factory=set)  # paths served with a git etag (40 hex), not an LFS sha256
    requests: list[tuple[str, str]] = field(default_factory=list)

    def publish(self, repo: str, filename: str, data: bytes, revision: str = "main") -> None:
        self.repos.setdefault(repo, {})[f"{revision}/{filename}"] = data

    def file_url(self, name: str, data: bytes) -> str:
        self.files[f"/files/{name}"] = data
        return f"{self.url}/files/{name}"

    def downloads(self) -> list[str]:
        """The files fetched (huggingface_hub also asks its own API things that are none of ours)."""
        return [path for method, path in self.requests if method == "GET" and ("/resolve/" in path or
                                                                               path.startswith("/files/"))]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            hub.requests.append((self.command, self.path))
            data, error, revision = self._lookup()
            if data is None:
                self.send_response(404)
                self.send_header("X-Error-Code", error)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            digest = hashlib.sha1(data) if self.path in hub.not_lfs else hashlib.sha256(data)
            etag = f'"{digest.hexdigest()}"'
            start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
            self.send_response(206 if start else 200)  # a resumed download asks for the rest (the Hub serves ranges)
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("ETag", etag)
            self.send_header("X-Repo-Commit", commit_of(revision))
            self.end_headers()
            if not body:
                return
            if self.path in hub.truncated:
                hub.truncated.discard(self.path)
                self.wfile.write(data[start:][: (len(data) - start) // 2])
                self.close_connection = True
                return
            self.wfile.write(data[start:])

        def _lookup(self) -> tuple[bytes | None, str, str]:
            """The body, else the error code the Hub sends in X-Error-Code; and the revision asked for."""
            if self.path in hub.files:
                return hub.files[self.path], "", "main"
            parts = self.path.lstrip("/").split("/")
            if len(parts) >= 5 and parts[2] == "resolve":
                repo, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                files = hub.repos.get(repo)
                if files is None:
                    return None, "RepoNotFound", revision
                if not any(key.startswith(f"{revision}/") for key in files):
                    return None, "RevisionNotFound", revision
                return files.get(f"{revision}/{filename}"), "EntryNotFound", revision
            return None, "EntryNotFound", "main"

    return Handler


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A FakeHub served on 127.0.0.1, with huggingface_hub's endpoint and cache and torch.hub's cache pointed at
    it and at this test's own folders."""
    fake = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # As HF_ENDPOINT set before the import: huggingface_hub builds its URL template from it then
    monkeypatch.setattr(hf_constants, "ENDPOINT", fake.url)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + URL_TEMPLATE)
    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)  # its retries' back-off: no need to wait here
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch-hub"))
    yield fake
    torch.hub.set_dir(before)
    server.shutdown()
    server.server_close()


@dataclass
class Published:
    """resnet18's default set on the fake Hub and its torchvision set at a fake URL, as the catalog lists them."""

    hub: FakeHub
    state: dict[str, torch.Tensor]  # what both files hold: a randomly initialised 1,000-class resnet18
    url: str  # the torchvision set's URL, with the first 8 hex digits of its sha256 in its name
    tv_bytes: bytes


@pytest.fixture
def published(hub, monkeypatch) -> Published:
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in resnets.build_model("resnet18").state_dict().items()}
    hub.publish("timm/resnet18.a1_in1k", "model.safetensors", save(state))
    buf = io.BytesIO()
    torch.save(state, buf)
    tv_bytes = buf.getvalue()
    url = hub.file_url(f"resnet18-{hashlib.sha256(tv_bytes).hexdigest()[:8]}.pth", tv_bytes)
    sets = catalog()
    monkeypatch.setitem(sets, "resnet18.tv_in1k", dataclasses.replace(sets["resnet18.tv_in1k"], source=url,
                                                                       sha256=""))
    return Published(hub, state, url, tv_bytes)


@pytest.fixture
def cached_files(tmp_path):
    """Every file in the test's caches (huggingface_hub's and torch.hub's), lock files aside."""
    return lambda: [p for p in sorted(tmp_path.rglob("*")) if p.is_file() and not p.name.endswith(".lock")
                    and ("hf-cache" in p.parts or "torch-hub" in p.parts)]
