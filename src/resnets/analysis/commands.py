"""`resnets models`, `resnets summary` and `resnets design`: counting and designing networks."""
from __future__ import annotations

import argparse

from ..errors import ResnetsError
from ..models import list_models
from .design import TEMPLATES, design_widths
from .flops import model_stats
from .summary import summarize


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


def add_summary(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="NAME", help="a name from `resnets models`")
    p.add_argument("--img-size", type=int, default=None, metavar="PX", help="square input size (default: the model's)")
    p.add_argument("--depth", type=int, default=None, help="group rows at this module depth (default: every layer)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the model's)")


def run_summary(args: argparse.Namespace) -> int:
    overrides = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    print(summarize(args.model, img_size=args.img_size, depth=args.depth, **overrides).format())
    return 0


def add_design(p: argparse.ArgumentParser) -> None:
    p.description = ("For each cardinality C, the group width d whose network has the parameters of the C=1 "
                     "template (ResNeXt, Xie et al. 2017, Table 2).")
    p.add_argument("template", choices=tuple(TEMPLATES))
    p.add_argument("--cardinality", type=int, nargs="+", required=True, metavar="C")
    p.add_argument("--img-size", type=int, default=224, metavar="PX", help="for the GMACs column [default: 224]")


def run_design(args: argparse.Namespace) -> int:
    rows = design_widths(args.template, args.cardinality, img_size=args.img_size)
    print(f"{'C':>4}  {'d':>4}  {'width C*d':>9}  {'name':>8}  {'params':>13}  {'GMACs':>6}")
    for r in rows:
        print(f"{r.cardinality:>4}  {r.width:>4}  {r.cardinality * r.width:>9}  {r.name:>8}  {r.params:>13,}  "
              f"{r.gmacs:>6.2f}")
    return 0


COMMANDS = {"models": (add_models, run_models), "summary": (add_summary, run_summary),
            "design": (add_design, run_design)}
