"""Fetching published weights with the ecosystem's own tools, into their own caches: huggingface_hub for Hub
repos (its cache, HF_HUB_OFFLINE, HF_ENDPOINT, revisions) and torch.hub for URLs (TORCH_HOME, the sha256 prefix
in the file's name, a progress bar). A file is verified before it is used, every time: a damaged copy in a cache
is removed, never trusted, and the error says so."""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import urllib.error
import zipfile
from contextlib import contextmanager
from typing import Iterator
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from safetensors import safe_open

from ..errors import DownloadError
from ..fileio import atomic_write_text
from ..messages import one_line
from ..models.weights import TORCH_WEIGHTS_FILE, WEIGHTS_FILE

HUB_FILES = (WEIGHTS_FILE, TORCH_WEIGHTS_FILE)  # what timm's `save_for_hf` writes, preferred first
HUB_PREFIX = "hf-hub:"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME_HASH = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub's convention: resnet50-11ad3fa6.pth
STALL_S = 60  # a download that receives nothing for this long is dead: torch.hub itself would wait forever


def split_hub_spec(spec: str) -> tuple[str, str | None]:
    """"hf-hub:ORG/REPO[@revision]" (the prefix optional) -> (repo, revision or None for the default branch)."""
    repo, _, revision = spec.removeprefix(HUB_PREFIX).partition("@")
    return repo, revision or None


def offline() -> bool:
    """HF_HUB_OFFLINE (huggingface_hub's switch) holds for URLs too: one switch for a cluster's compute nodes."""
    return bool(hf_constants.HF_HUB_OFFLINE)


def fetch(source: str, sha256: str = "", what: str = "", progress: bool = True, cache_first: bool = False) -> Path:
    """The local file of `source` ("hf-hub:repo[@revision]" or an http(s) URL), fetched first if it is not in
    the cache, verified in any case. `what` names the weights in messages (e.g. resnet50.a1_in1k).
    `cache_first`: a Hub file already cached is used without asking the Hub whether it changed (as a URL's
    always is), for files that do not change."""
    what = what or source
    if source.startswith(HUB_PREFIX):
        repo, revision = split_hub_spec(source)
        return fetch_hub_file(repo, HUB_FILES, revision, what, cache_first=cache_first)
    if urlparse(source).scheme in ("http", "https"):
        return fetch_url(source, sha256, what, progress)
    raise DownloadError(f"{what}: {source!r} is neither hf-hub:REPO nor an http(s) URL")


def hub_cache() -> str:
    return hf_constants.HF_HUB_CACHE


def fetch_hub_file(repo: str, filenames: tuple[str, ...], revision: str | None, what: str, *,
                   cache_first: bool = False, optional: bool = False) -> Path | None:
    """The first of `filenames` that the Hub repo has, through huggingface_hub's cache (`fetch`'s
    `cache_first`); None if it has none and the file is `optional`."""
    for filename in filenames if cache_first else ():
        cached_path = huggingface_hub.try_to_load_from_cache(repo, filename, revision=revision)
        if isinstance(cached_path, str):
            _verify_hub_blob(Path(cached_path), what)
            return Path(cached_path)
    for i, filename in enumerate(filenames):
        try:
            path = Path(huggingface_hub.hf_hub_download(repo, filename, revision=revision))
        except hf_errors.RemoteEntryNotFoundError:
            continue  # the repo has no file of this name: the next one
        except hf_errors.LocalEntryNotFoundError:  # no server to ask, and not in the cache under this name
            if any(isinstance(huggingface_hub.try_to_load_from_cache(repo, other, revision=revision), str)
                   for other in filenames[i + 1:]):
                continue  # cached under a later name: asking the server again for it would only wait again
            raise DownloadError(_unreachable(what, f"{hf_constants.ENDPOINT}/{repo} ({' or '.join(filenames)})",
                                             hub_cache())) from None
        except hf_errors.RepositoryNotFoundError:
            raise DownloadError(f"{what}: no repository {repo!r} at {hf_constants.ENDPOINT}") from None
        except hf_errors.RevisionNotFoundError:
            raise DownloadError(f"{what}: {repo} has no revision {revision!r}") from None
        except hf_errors.HFValidationError as e:  # checked before any request: a name that cannot be a repo
            raise DownloadError(f"{what}: not a Hub repository name ({one_line(e)})") from None
        except Exception as e:  # noqa: BLE001  a server error, a full disk, a connection that keeps dropping
            # (after huggingface_hub's retries it raises its HTTP stack's own error: httpx's in huggingface_hub 1,
            # httpx2's in 2): whatever it is, this download failed
            raise DownloadError(f"{what}: downloading {filename} from {hf_constants.ENDPOINT}/{repo} failed "
                                f"({type(e).__name__}: {one_line(e)})") from None
        _verify_hub_blob(path, what)
        return path
    if optional:
        return None
    raise DownloadError(f"{what}: {repo} at {hf_constants.ENDPOINT} has none of {', '.join(filenames)}")


def _verify_hub_blob(path: Path, what: str) -> None:
    """huggingface_hub names each cached file (a blob) by its etag, which for files kept in Git LFS, weights
    among them, is the sha256 of the content. A blob that no longer hashes to its name is removed; so is a
    weights file without such a name (a server that is not the Hub) that is not a whole weights file."""
    blob = path.resolve()
    if _SHA256.match(blob.name):
        damaged = _file_sha256(blob) != blob.name
        why = f"its sha256 is not {blob.name}"
    else:
        damaged = path.name in HUB_FILES and not _whole(blob)
        why = "it is not a whole weights file"
    if damaged:
        blob.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise DownloadError(f"{what}: the cached copy {path} was damaged ({why}); it is removed, the next run "
                            f"downloads it again")


def url_cache() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def fetch_url(url: str, sha256: str, what: str, progress: bool = True) -> Path:
    """The file at `url` in torch.hub's cache. `sha256`, or failing it the hex digits in the file's name, is
    the prefix of the content's sha256 that the download and every later use are checked against."""
    name = os.path.basename(urlparse(url).path)
    if not name or name in (".", ".."):
        raise DownloadError(f"{what}: {url} names no file (the cache keeps a download under its file name)")
    expected = sha256 or (match.group(1) if (match := _NAME_HASH.search(name)) else "")
    path = url_cache() / name
    if not path.is_file():
        if offline():
            raise DownloadError(_unreachable(what, url, url_cache()))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # into a temp file beside `path`, hash checked, then renamed: a failed download leaves nothing
            with _stall_limit(STALL_S):
                torch.hub.download_url_to_file(url, str(path), hash_prefix=expected or None, progress=progress)
        except urllib.error.HTTPError as e:
            raise DownloadError(f"{what}: {url} answered {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise DownloadError(_unreachable(what, url, url_cache()) + f" ({one_line(e.reason)})") from None
        except RuntimeError as e:  # torch.hub: 'invalid hash value (expected "...", got "...")'
            raise DownloadError(f"{what}: the download from {url} does not match its sha256 ({one_line(e)}); "
                                f"nothing was kept") from None
        except (OSError, http.client.HTTPException) as e:  # a full disk; a connection cut mid-file (IncompleteRead)
            raise DownloadError(f"{what}: downloading {url} failed ({one_line(e)}); nothing was kept") from None
        if not expected:  # no hash to check: a connection cut short passes torch.hub's download
            if not _whole(path):
                path.unlink(missing_ok=True)
                raise DownloadError(f"{what}: the download from {url} is incomplete (the connection was cut?); "
                                    f"nothing was kept")
            atomic_write_text(_own_hash(path), _file_sha256(path))  # what every later use is checked against
        return path
    expected = expected or (_own_hash(path).read_text().strip() if _own_hash(path).is_file() else "")
    if not (_file_sha256(path).startswith(expected) if expected else _whole(path)):
        path.unlink(missing_ok=True)
        _own_hash(path).unlink(missing_ok=True)
        raise DownloadError(f"{what}: the cached copy {path} was damaged (its sha256 is not the one "
                            f"{'published' if sha256 or _NAME_HASH.search(name) else 'it had when downloaded'}); "
                            f"it is removed, the next run downloads it again")
    return path


@contextmanager
def _stall_limit(seconds: float) -> Iterator[None]:
    """torch.hub opens its connection with urllib's default timeout, none: a server that stops answering would
    hold the download forever. The default is the process's, so it is set for the download only."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _own_hash(path: Path) -> Path:
    """Where the sha256 of a download whose URL publishes none is kept, beside it in torch.hub's cache."""
    return path.with_name(path.name + ".sha256")


def cached(source: str) -> bool:
    """Whether `source` is in its cache already (not verified: listing the catalog must stay quick)."""
    if source.startswith(HUB_PREFIX):
        repo, revision = split_hub_spec(source)
        return any(isinstance(huggingface_hub.try_to_load_from_cache(repo, name, revision=revision), str)
                   for name in HUB_FILES)
    return (url_cache() / os.path.basename(urlparse(source).path)).is_file()


def _unreachable(what: str, where: str, cache: str | Path) -> str:
    mode = "offline mode (HF_HUB_OFFLINE) is on" if offline() else "the server cannot be reached"
    return (f"{what}: not in the cache and {mode}; needed {where}. Fetch it where there is a network with "
            f"`resnets download {what}` into {cache} (or copy that cache here), or give a weights file")


def _whole(path: Path) -> bool:
    """Whether a weights file is complete: a zip (torch.save) whose every member reads back with its CRC, or a
    safetensors file as long as its header says."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                return archive.testzip() is None
        except (zipfile.BadZipFile, OSError, EOFError):
            return False
    try:
        with safe_open(str(path), "pt"):  # checks the data section against the header's offsets
            return True
    except Exception:  # noqa: BLE001  (SafetensorError and friends: each means "not a whole safetensors file")
        pass
    try:  # torch.save's legacy (pre-1.6, non-zip) format: whole if it unpickles to the end
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception:  # noqa: BLE001  (EOFError, UnpicklingError, ...: each means "not whole")
        return False


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
