"""CLI subcommand `check-data`."""
from __future__ import annotations

import argparse


def cmd_check_data(args: argparse.Namespace) -> int:
    from .check import check_data

    report = check_data(args.dir, workers=args.workers, val_dir=args.val_dir, max_imbalance=args.max_imbalance)
    print(report.format())
    return 1 if report.problems else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `resnets check-data`."""
    from .check import MAX_IMBALANCE

    p = sub.add_parser("check-data", help="decode every image of a folder and report problems",
                       description="Fully decode every image (all cores) and report unreadable files, class "
                                   "counts, empty and imbalanced classes, identical files, and files shared by "
                                   "train/ and val/ (or test/, or --val-dir). Exit code 0: clean, 1: problems "
                                   "found, 2: bad arguments.")
    p.add_argument("dir", metavar="DIR", help="class folders, or train/ and val/ (or test/) holding them")
    p.add_argument("-j", "--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--val-dir", default=None, metavar="DIR2", help="a val folder elsewhere, checked for leakage")
    p.add_argument("--max-imbalance", type=float, default=MAX_IMBALANCE, metavar="X",
                   help=f"largest/smallest class above this is a problem [default: {MAX_IMBALANCE:g}]")
    p.set_defaults(func=cmd_check_data)
