"""`resnets report`: arguments and printing; the page is built in `report_page.py`."""
from __future__ import annotations

import argparse

from .fileio import check_writable
from .report_page import PAGE, folder_kind, write_report_page


def add_report(p: argparse.ArgumentParser) -> None:
    p.description = (f"Rebuild {PAGE} of a run folder or an eval folder from the files in it: one self-contained "
                     f"page (no network, images inside) with the figures, curves, confusion matrix, per-class "
                     f"report, top losses, unreadable files and configuration.")
    p.add_argument("folder", metavar="DIR", help="a run folder (config.yaml) or an eval folder (eval.json)")
    p.add_argument("--output", default=None, metavar="FILE.html", help=f"default: DIR/{PAGE}")


def run_report(args: argparse.Namespace) -> int:
    kind = folder_kind(args.folder)  # before anything is written: a folder of neither kind is a one-line error
    if args.output is not None:
        check_writable(args.output, "--output")
    page = write_report_page(args.folder, kind, args.output)
    print(f"wrote {page} ({kind} folder)")
    return 0


COMMANDS = {"report": (add_report, run_report)}
