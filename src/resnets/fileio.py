"""Atomic file writes (a reader, or a crash, never sees a half-written file under its final name), CSV text that
a spreadsheet opens as data, and content checksums (a damaged file is refused, not trusted)."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import yaml

from .errors import ConfigError, ResnetsError, WriteError


def _read_umask() -> int:
    # os.umask can only be read by setting it: do it once, at import, not while other threads create files.
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _replace_atomically(path: str | os.PathLike, fill: Callable[[int, str], None]) -> Path:
    """`fill(fd, tmp)` writes and fsyncs a temp file in the same directory (and closes `fd`); then it is
    renamed over `path`. A failure leaves `path` as it was and no temp file behind; an OSError (a full disk,
    a quota, an I/O error) comes out as WriteError naming `path`: the bare one names no file, or the temp file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        fill(fd, tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):  # the write's own error is the one to report
                Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, ResnetsError):
            error = WriteError(f"could not write {path}: {e.strerror or str(e) or type(e).__name__}")
            error.errno = e.errno
            raise error from e
        raise
    return path


def check_writable(path: str | os.PathLike, what: str, folder: bool = False) -> None:
    """ConfigError now, before the work, where the atomic writers below would fail at the end: a folder under
    the file's name, a file where a parent folder should be, or a folder this user may not write.
    `folder`: `path` is a folder to write in (created if missing), not a file."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path}: a file, not a folder")
    if not folder and path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name")
    parent = path if folder else path.parent
    while not parent.exists() and parent != parent.parent:  # atomic writes create the missing folders
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} {path}: {parent} is not a folder")
    try:  # os.access says yes to root anywhere, /proc included: try it
        fd, probe = tempfile.mkstemp(prefix=".resnets-probe.", dir=parent)
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot write in {parent} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call `write(fileobj)` on a temp file in the same directory, fsync it, then rename it over `path`."""
    def fill(fd: int, tmp: str) -> None:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())

    return _replace_atomically(path, fill)


def atomic_write_to(path: str | os.PathLike, write_file: Callable[[str], None]) -> Path:
    """`atomic_write` for writers that take a file name (`safetensors.torch.save_file`, which in current
    releases writes from the tensors' own memory): no second in-memory copy of a GB-sized file."""
    def fill(fd: int, tmp: str) -> None:
        os.close(fd)
        write_file(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())

    return _replace_atomically(path, fill)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """`source`'s bytes under `path`, atomically: a second name for a file just written, without writing it
    out of memory (and checksumming it) a second time."""
    with open(source, "rb") as src:
        return atomic_write(path, lambda f: shutil.copyfileobj(src, f, 1 << 20))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP's "CSV Injection"): `=HYPERLINK(...)`
# or `@SUM(...)` as a class folder's name is enough. Class and file names come from the user's data.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any, float_format: str = ".6f") -> Any:
    """A value as a CSV cell: floats in `float_format`; text that a spreadsheet would run as a formula behind a
    `'`, which makes it text. Only text: a number such as -0.5 stays a number. Text that starts with `'`
    gets one more, so `csv_value` reads every cell back as it was."""
    if isinstance(value, float):
        return format(value, float_format)
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, "'")):
        return "'" + value
    return value


def csv_value(cell: str) -> str:
    """The text that `csv_cell` wrote as `cell`."""
    return cell[1:] if cell.startswith("'") else cell


def csv_text(rows: Iterable[Sequence[Any]], float_format: str = ".6f") -> str:
    """Rows (the header first) as CSV text, every cell through `csv_cell`: the one way resnets writes CSV.

    Rows end in CRLF (RFC 4180, the csv module's default): the writer then quotes a cell holding a carriage
    return, which unquoted would end the row in a spreadsheet and start the next one with the rest of the name,
    as a formula if it starts like one."""
    buf = io.StringIO()
    csv.writer(buf).writerows([csv_cell(v, float_format) for v in row] for row in rows)
    return buf.getvalue()


def atomic_write_csv(path: str | os.PathLike, rows: Iterable[Sequence[Any]], float_format: str = ".6f") -> Path:
    """`csv_text(rows)` as UTF-8, whatever the locale, with its line ends as they are (text mode would turn
    CRLF into CR CR LF on Windows)."""
    return atomic_write_bytes(path, csv_text(rows, float_format).encode("utf-8"))


def written_by_torch_save(path: str | os.PathLike) -> bool:
    """Whether the file starts as torch.save's output does: a zip archive (torch >= 1.6), or a pickle (older).
    An ONNX file or an image given as weights is then named for what it is not, rather than by the
    unpickler's error about whatever its bytes happen to spell."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def written_as_safetensors(path: str | os.PathLike) -> bool:
    """Whether the file starts as a safetensors file does (found under another name: w.pt): 8 bytes of header
    length, then the JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path)


def content_digest(obj: Any) -> str:
    """SHA-256 over a nest of dicts/lists of tensors and primitives (keys sorted, tensors by dtype/shape/bytes)."""
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if torch.is_tensor(x):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(b"D")
            for k in sorted(x, key=str):
                h.update(repr(k).encode())
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(b"L%d" % len(x))
            for v in x:
                feed(v)
        else:
            h.update(repr(x).encode())

    feed(obj)
    return h.hexdigest()


def read_bounded(path: str | os.PathLike, max_bytes: int, holds: str) -> bytes:
    """The bytes of `path`, read only if it is a regular file of at most `max_bytes`: a FIFO would block the read
    forever, /dev/zero fill the memory. ValueError says why not ("`holds`": what such a file holds at most);
    OSError as the system raises it."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file")
    if info.st_size > max_bytes:
        raise ValueError(f"{info.st_size:,} bytes, more than {holds} ({max_bytes:,} at most)")
    with open(path, "rb") as f:
        return f.read(max_bytes + 1)  # bounded, should the file have grown since the stat


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any] | None:
    """The mapping a YAML file holds (a run's config.yaml); None when it is missing, unreadable or not a mapping."""
    try:
        value = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None

