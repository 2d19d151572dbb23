"""How resnets words what it tells the user: warnings on stderr, an exception in one line, counts and lists."""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

Warn = Callable[[str], None]  # where a function sends a warning; `warn` below unless the caller collects them


def warn(message: str) -> None:
    print(f"warning: {printable(message)}", file=sys.stderr)


def printable(text: str) -> str:
    """`text` with its unprintable characters escaped as repr escapes them (`a\\nb`): a file or class folder
    named with a newline, a carriage return or a terminal escape sequence then cannot break a printed report
    into lines that look like resnets' own."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(error: BaseException, limit: int = 160) -> str:
    """An exception's message on one line, cut at `limit` characters (the exporters and unpicklers write
    paragraphs); the type's name when the message is empty."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut at `limit`: for libraries whose first line is the gist and
    the rest a dump (TorchCodec, the exporters)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def counted(n: int, word: str, plural: str | None = None) -> str:
    """`counted(1, "image")` is "1 image", `counted(1200, "image")` "1,200 images"."""
    return f"{n:,} {word if n == 1 else plural or word + 's'}"


def listed(items: Sequence[Any], limit: int = 5) -> str:
    """The first `limit` items, comma-separated, then how many there are in all."""
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")
