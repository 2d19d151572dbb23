"""`resnets check-data`."""
from __future__ import annotations

import argparse

from ..options import add_max_image_argument, add_workers_argument
from .check import MAX_IMBALANCE, check_data
from .images import MAX_IMAGE_MB


def add_check_data(p: argparse.ArgumentParser) -> None:
    p.description = ("Fully decode every image (all cores) and report unreadable files, class counts, empty and "
                     "imbalanced classes, identical files, and files shared by train/ and val/ (or test/, or "
                     "--val-dir). Exit code 0: clean, 1: problems found, 2: bad arguments.")
    p.add_argument("dir", metavar="DIR", help="class folders, or train/ and val/ (or test/) holding them")
    add_workers_argument(p, "all cores")
    p.add_argument("--val-dir", default=None, metavar="DIR2", help="a val folder elsewhere, checked for leakage")
    p.add_argument("--max-imbalance", type=float, default=MAX_IMBALANCE, metavar="X",
                   help=f"largest/smallest class above this is a problem [default: {MAX_IMBALANCE:g}]")
    add_max_image_argument(p, MAX_IMAGE_MB)


def run_check_data(args: argparse.Namespace) -> int:
    report = check_data(args.dir, workers=args.workers, val_dir=args.val_dir, max_imbalance=args.max_imbalance,
                        max_image_mb=args.max_image_mb)
    print(report.format())
    return 1 if report.problems else 0


COMMANDS = {"check-data": (add_check_data, run_check_data)}
