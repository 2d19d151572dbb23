"""Small image folders built from scikit-learn's handwritten digits, for benchmarks/time_to_accuracy.py.

    python benchmarks/digit_folders.py ROOT [--cases grey32,tiny] [--seed 0] [--force]

Writes ROOT/CASE/{train,val}/<digit>/<index>.png for each case and prints what it holds. The split is explicit
(train/ and val/ folders), so every contender (resnets, which takes train/ and val/ as its split, and the plain
PyTorch loops, which read them with ImageFolder) trains and validates on the same files. It is a seeded,
stratified split of each class's images, nested across cases: a case that takes the first k images of a class
(in the seeded order) has as val the first ones of those, so `tiny`'s val images are all in `grey32`'s val.
A folder whose manifest (ROOT/CASE/digit-folder.json) matches the case is reused, not rewritten.

Cases (`CASES`): `grey32` (all 1,797, 32 px grey), `colour64` (all, 64 px, each image with its own seeded
background and ink colour), `small-imbalanced` (20 to 170 images per class, 48 px grey), `tiny` (30 per class,
32 px grey), `colour128-small` (50 per class, 128 px colour). Grey images are white ink on black, as resnets'
built-in digits dataset draws them. A measurement aid for BENCHMARKS.md, not part of the package.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from resnets.fileio import atomic_write_json

MANIFEST = "digit-folder.json"
VAL_FRACTION = 0.2
FORMAT = 1  # bump when the drawing or the split changes: existing folders are then rebuilt
# The least luminance gap (0-255) between a colour case's ink and background: a digit that is there to be read.
MIN_CONTRAST = 90.0


@dataclass(frozen=True)
class Case:
    """What one folder holds. `per_class`: images taken of each digit 0..9 (None: all of them; an int: the
    same for every class; a tuple: one count per class)."""

    size: int
    colour: bool
    per_class: int | tuple[int, ...] | None
    about: str


# Class c of the imbalanced case has 20 + 150 c / 9 images (20..170, 8.5:1): the digits have at most 183 of a class.
IMBALANCED = tuple(round(20 + 150 * c / 9) for c in range(10))
CASES = {
    "grey32": Case(32, False, None, "all 1,797 images, 32 px grey, balanced"),
    "colour64": Case(64, True, None, "all 1,797 images, 64 px, a seeded ink and background colour per image"),
    "small-imbalanced": Case(48, False, IMBALANCED, "20 to 170 images per class (950), 48 px grey"),
    "tiny": Case(32, False, 30, "30 images per class (300), 32 px grey"),
    "colour128-small": Case(128, True, 50, "50 images per class (500), 128 px colour"),
}


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as (N, 8, 8) ink 0..16 and their labels."""
    from sklearn.datasets import load_digits as sklearn_digits  # ships with scikit-learn, no download

    digits = sklearn_digits()
    return digits.images, digits.target


def split(labels: np.ndarray, case: Case, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) digit indices of `case`: per class, its first images in one seeded order, a fifth held out."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for c in range(10):
        order = rng.permutation(np.flatnonzero(labels == c))  # drawn for every class whatever the case: nested
        wanted = case.per_class if not isinstance(case.per_class, tuple) else case.per_class[c]
        taken = order[: len(order) if wanted is None else wanted]
        if wanted is not None and len(taken) < wanted:
            raise ValueError(f"digit {c} has {len(order)} images, the case asks for {wanted}")
        n_val = min(max(round(len(taken) * VAL_FRACTION), 1), len(taken) - 1)
        val += taken[:n_val].tolist()
        train += taken[n_val:].tolist()
    return sorted(train), sorted(val)


def draw(ink: np.ndarray, index: int, case: Case, seed: int) -> Image.Image:
    """One digit at `case.size` px: grey (ink white on black) or in colours drawn for this image alone."""
    alpha = Image.fromarray(np.round(ink * (255 / 16)).astype(np.uint8), "L")
    alpha = np.asarray(alpha.resize((case.size, case.size), Image.BILINEAR), dtype=np.float32)[..., None] / 255
    if not case.colour:
        return Image.fromarray(np.round(alpha[..., 0] * 255).astype(np.uint8), "L")
    rng = np.random.default_rng([seed, index])  # the image's own colours, whichever case it is in
    background = rng.uniform(0, 255, 3)
    ink_colour = rng.uniform(0, 255, 3)
    while abs(_luma(ink_colour) - _luma(background)) < MIN_CONTRAST:
        ink_colour = rng.uniform(0, 255, 3)
    pixels = background * (1 - alpha) + ink_colour * alpha  # (H, W, 3)
    return Image.fromarray(np.round(pixels).clip(0, 255).astype(np.uint8), "RGB")


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))  # ITU-R 601, as PIL's "L"


def manifest(name: str, case: Case, seed: int, train: list[int], val: list[int], labels: np.ndarray) -> dict:
    counts = lambda idx: np.bincount(labels[idx], minlength=10).tolist()  # noqa: E731
    return dict(format=FORMAT, case=name, seed=seed, spec=asdict(case), train=len(train), val=len(val),
                train_per_class=counts(train), val_per_class=counts(val))


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def build_case(name: str, root: str | Path, seed: int = 0, force: bool = False) -> Path:
    """ROOT/NAME with train/ and val/ class folders of PNGs; reused when its manifest matches. Written under a
    temporary name and renamed into place, so an interrupted build never passes for a finished one."""
    case = CASES[name]
    images, labels = load_digits()
    train, val = split(labels, case, seed)
    wanted = manifest(name, case, seed, train, val, labels)
    folder = Path(root) / name
    if not force and read_manifest(folder) == json.loads(json.dumps(wanted)):
        return folder
    partial = Path(root) / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    for part, indices in (("train", train), ("val", val)):
        for c in range(10):
            (partial / part / str(c)).mkdir(parents=True)
        for i in indices:
            draw(images[i], i, case, seed).save(partial / part / str(labels[i]) / f"{i:04d}.png")
    atomic_write_json(partial / MANIFEST, wanted)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def describe(folder: Path) -> str:
    m = read_manifest(folder) or {}
    spec = m.get("spec", {})
    return (f"{m.get('case')}: {m.get('train')} train / {m.get('val')} val, {spec.get('size')} px "
            f"{'colour' if spec.get('colour') else 'grey'}, train per class {m.get('train_per_class')}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="folder that gets one subfolder per case")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--seed", type=int, default=0, help="the split and the colours")
    p.add_argument("--force", action="store_true", help="rewrite folders even when their manifest matches")
    a = p.parse_args()
    names = [n for n in a.cases.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; valid: {', '.join(CASES)}")
    for name in names:
        print(describe(build_case(name, a.root, a.seed, a.force)))


if __name__ == "__main__":
    main()
