"""Finding the images of an ImageFolder tree: torchvision's order and its following of symlinks, without
its blind spot. `make_dataset` walks with `os.walk(followlinks=True)`, so a link back up the tree
(`cat/up -> ..`) lists every image again at each level until the OS's path limit: 20 files became 1,220,
and the copies landed in both train and val."""
from __future__ import annotations

import functools
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from ..errors import DataError
from ..messages import Warn, counted, warn
from .images import is_image_file


def require_folder(path: Path, what: str = "") -> None:
    """DataError unless `path` is a folder, naming what it is instead (a CSV given as the data folder)."""
    if path.is_dir():
        return
    found = "a file, not a folder" if path.exists() else "no such folder"
    raise DataError(f"{what} {path}: {found}" if what else f"{path}: {found}")


class _FolderWalk:
    """Image files under class folders, following symlinks but entering each real folder and taking each
    real file (os.path.realpath) once.

    Folders reached without a link are listed before any link is followed (`find_images` follows the
    links that are class folders next), so a folder or file that is both in the tree and linked from
    elsewhere in it keeps its own place and class; a link is followed only to somewhere not yet listed (in
    sorted order: the same choice on every run).
    """

    def __init__(self, root: Path) -> None:
        self.root = str(root)  # str paths, as torchvision's make_dataset gives
        real_root = os.path.realpath(root)
        # A link to the root or to a folder above it (`cat/up -> ..`) leads back into the walk: a loop.
        self.folders = {real_root, *map(str, Path(real_root).parents)}
        self.real: dict[str, str] = {self.root: real_root}  # listed folder -> its real path
        self.owner: dict[str, str] = {}  # real path of a listed folder -> the class it was listed for
        self.found: dict[str, list[tuple[str, str]]] = defaultdict(list)  # class -> (folder, file name)
        self.linked_folders: list[tuple[str, str]] = []  # (path, class), followed after the direct folders
        self.linked_files: list[tuple[str, str, str]] = []  # (folder, file name, class)
        self.skipped = 0  # links to a folder or file already listed

    def take_folder(self, path: str, cls: str) -> str | None:
        """The folder's real path, or None (counted as skipped) when it was listed already."""
        real = os.path.realpath(path)
        if real in self.folders:
            self.skipped += 1
            return None
        self.folders.add(real)
        self.real[path] = real
        self.owner[real] = cls
        return real

    def list_folder(self, top: str, cls: str) -> None:
        """Images of `top` and of its subfolders that are not links; links wait in `linked_*`."""
        found = self.found[cls]
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as scan:
                    entries = list(scan)
            except OSError:  # unreadable folder: skipped, as os.walk (and so ImageFolder) does
                continue
            for entry in entries:
                if entry.name.startswith("."):  # .ipynb_checkpoints, .thumbnails, .DS_Store, ._x.jpg
                    continue
                if _is_folder(entry):
                    if entry.is_symlink():
                        self.linked_folders.append((entry.path, cls))
                    elif self.take_folder(entry.path, cls):
                        stack.append(entry.path)
                elif not _is_image_suffix(os.path.splitext(entry.name)[1]):
                    continue
                elif entry.is_symlink():
                    self.linked_files.append((folder, entry.name, cls))
                else:
                    found.append((folder, entry.name))

    def follow_links(self) -> None:
        while self.linked_folders:  # in rounds: links found behind a link come after the ones found before
            pending, self.linked_folders = sorted(self.linked_folders), []
            for path, cls in pending:
                if self.take_folder(path, cls):
                    self.list_folder(path, cls)
        if not self.linked_files:
            return
        # Built only when needed: a real path per file costs more than the rest of the walk.
        files = {os.path.join(self.real[folder], name) for found in self.found.values() for folder, name in found}
        for folder, name, cls in sorted(self.linked_files):
            real = os.path.realpath(os.path.join(folder, name))  # a broken link stays: it is reported unreadable
            if real in files:
                self.skipped += 1
                continue
            files.add(real)
            self.found[cls].append((folder, name))


# `is_image_file` on a Path per file is 40% of a walk over a million files: ask it once per suffix instead.
_is_image_suffix = functools.cache(lambda suffix: is_image_file(Path("image" + suffix)))


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows a link
    except OSError:
        return False


def find_images(root: Path, class_to_idx: dict[str, int], warn: Warn = warn) -> list[tuple[str, int]]:
    """(path, label) of every image under <root>/<class>/, in torchvision's ImageFolder order.

    Symlinked class folders, subfolders and files are followed, as ImageFolder does, but a folder or file
    reached twice (a link back up the tree, two links to one place) is listed once: otherwise a loop lists
    each image dozens of times and the copies land in both train and val. Such repeats are skipped with one
    warning rather than refused: what is left is well defined (each image once, in its own class folder),
    and links that share files between folders are a common way to save disk. Hidden files and folders
    and non-images are ignored.
    """
    walk = _FolderWalk(root)
    tops = [(top, cls) for cls in sorted(class_to_idx) if os.path.isdir(top := os.path.join(walk.root, cls))]
    # Real class folders with their real subfolders first, then class folders that are links, then the links
    # inside: a folder keeps the class of its place in the tree, and a link from one class into another
    # (or into another's subfolder) is a repeat, not a relabelling.
    for linked in (False, True):
        for top, cls in tops:
            if os.path.islink(top) == linked and walk.take_folder(top, cls):
                walk.list_folder(top, cls)
    walk.follow_links()
    _warn_linked_classes(walk, root, tops, warn)
    _warn_skipped(walk, root, warn)
    return [(os.path.join(folder, name), class_to_idx[cls])
            for cls in sorted(class_to_idx) for folder, name in sorted(walk.found[cls])]


def images_under(folder: Path, warn: Warn = warn) -> list[Path]:
    """Every image under `folder`, at any depth, sorted: `find_images` for a folder that is one class."""
    walk = _FolderWalk(folder)  # the folder and those above it count as entered: a link to them is a loop
    walk.list_folder(walk.root, "")
    walk.follow_links()
    _warn_skipped(walk, folder, warn)
    return [Path(parent, name) for parent, name in sorted(walk.found[""])]


def _warn_linked_classes(walk: _FolderWalk, root: Path, tops: list[tuple[str, str]], warn: Warn) -> None:
    """Name a class folder that links to a folder already listed: it gets no images of its own."""
    for top, cls in tops:
        if top in walk.real:
            continue
        real = os.path.realpath(top)
        owner = walk.owner.get(real)
        if owner is None:
            what = "the data folder or one above it"
        elif walk.real.get(os.path.join(walk.root, owner)) == real:
            what = f"the class folder {owner}"
        else:
            what = f"{real}, a folder of class {owner}"
        warn(f"{root}: class folder {cls} is a link to {what}; its images are used once, not as {cls}")


def _warn_skipped(walk: _FolderWalk, root: Path, warn: Warn) -> None:
    if walk.skipped:
        warn(f"{root}: skipped {counted(walk.skipped, 'symlink')} to a folder or file "
             f"already listed (a link back up the tree, or two links to one place); each image is used once")


def list_images(paths: Iterable[str | Path], warn: Warn = warn) -> list[Path]:
    """Image files among `paths`; folders are searched recursively, in sorted order, as training searches a
    class folder (symlinks followed, each real folder and file once; hidden files skipped). `warn` takes
    the note on skipped symlinks. A path named that is not a regular file (a FIFO, /dev/zero) is kept, to be
    refused by `read_bytes` with its reason, as it would be inside a folder."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += images_under(p, warn)
        elif p.exists():
            found.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return found
