"""`resnets models`: the registered names with their size and cost."""
from __future__ import annotations

import argparse

from ..analysis.flops import model_stats
from ..errors import ResnetsError
from .registry import list_models


def add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="wildcard, e.g. 'res2net*' [default: all]")


def run_models(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise ResnetsError(f"no model matches {args.pattern!r}; see `resnets models`")
    width = max(len(n) for n in names)
    print(f"{'model':<{width}}  {'params':>13}  {'GMACs':>7}  input")
    for name in names:
        s = model_stats(name)
        c, h, w = s["input_size"]
        print(f"{name:<{width}}  {s['params']:>13,}  {s['gmacs']:>7.2f}  {c}x{h}x{w}")
    return 0


COMMANDS = {"models": (add_models, run_models)}
