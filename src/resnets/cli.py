"""`resnets COMMAND ...`: a thin layer over the Python API. Each command's arguments and printing live with its
package (`<package>/commands.py`); a command's module is imported only when that command runs, so that
`resnets --help` and `resnets models` do not wait for the training stack. User mistakes print one line and
exit 2."""
from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from typing import Sequence

from .errors import ResnetsError

# name: (module with COMMANDS[name] = (add_arguments, run), one line for `resnets --help`, an example)
COMMANDS = {
    "train": ("resnets.training.commands", "train a model (default: digits on cifar_resnet20)",
              "resnets train --data-dir photos/ --model resnet18 --epochs 30 --img-size 160"),
    "lr-find": ("resnets.training.commands", "learning-rate range test: loss against lr (PNG), a suggested --lr",
                "resnets lr-find --data-dir photos/ --model resnet18 --output lr_find.png"),
    "eval": ("resnets.inference.commands", "accuracy, per-class report and confusion matrix on an image folder",
             "resnets eval --weights runs/<run> --data-dir photos/"),
    "predict": ("resnets.inference.commands", "top-k classes of image files (CSV)",
                "resnets predict --weights runs/<run> --topk 3 cat.jpg more_images/"),
    "export": ("resnets.export.commands", "ONNX (fp32, int8, fp16), .pt2, OpenVINO or a Triton repository, "
               "checked and timed against the model", "resnets export --weights runs/<run> --format onnx-int8"),
    "cam": ("resnets.inference.commands", "Grad-CAM heatmaps over images (PNG)",
            "resnets cam --weights runs/<run> cat.jpg"),
    "report": ("resnets.report_commands", "rebuild report.html of a run or eval folder (one self-contained page)",
               "resnets report runs/<run>"),
    "check-data": ("resnets.data.commands", "decode every image of a folder and report problems",
                   "resnets check-data photos/ --val-dir holdout/"),
    "weights": ("resnets.hub.commands", "published weights by name: accuracy, sizes, license, cached or not",
                "resnets weights resnet50"),
    "download": ("resnets.hub.commands", "fetch published weights ahead of use (for offline compute nodes)",
                 "resnets download resnet50.a1_in1k resnext50_32x4d"),
    "models": ("resnets.analysis.commands", "table of models with params and GMACs", "resnets models 'resnext*'"),
    "summary": ("resnets.analysis.commands", "per-layer table of a model",
                "resnets summary res2net50_26w_4s --img-size 224 --depth 2"),
    "design": ("resnets.analysis.commands", "ResNeXt complexity-preserving widths (paper Table 2)",
               "resnets design resnext50 --cardinality 1 2 4 8 32"),
    "bench": ("resnets.bench.commands", "training/inference throughput, against torchvision and timm",
              "resnets bench --model resnet50 --mode infer --compare torchvision,timm"),
    "serve": ("resnets.serve.commands", "an HTTP service: POST /predict, a web page, metrics, micro-batching",
              "resnets serve runs/<run> --port 8000"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage before a mistake, 39 lines for `train`: print the mistake alone, and
    where the usage is. Subcommand parsers are made of this class too (add_subparsers takes the parent's)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(only: str | None = "*") -> argparse.ArgumentParser:
    """The parser of every command ("*"), or with the arguments of the one command `only` (None: of none)."""
    examples = "\n".join(f"  {example}" for _, _, example in COMMANDS.values())
    parser = OneLineErrorParser(prog="resnets", description="The ResNet family in PyTorch.",
                                epilog=f"examples:\n{examples}", formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_line, example) in COMMANDS.items():
        p = sub.add_parser(name, help=help_line, description=help_line[0].upper() + help_line[1:] + ".",
                           epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
        if only in ("*", name):
            add_arguments, run = importlib.import_module(module).COMMANDS[name]
            add_arguments(p)
            p.description = textwrap.fill(p.description, 100)  # the raw formatter keeps the example's lines
            p.set_defaults(func=run)
    parser.commands = sub.choices  # type: ignore[attr-defined]  (main names the command's help on a mistake)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    try:  # argparse exits on --help and on a usage mistake; main() returns the code instead
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # as parse_args would, but pointing at `resnets train --help`, where train's flags are listed
            parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.func(args)
    except ResnetsError as e:
        print(f"resnets {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path given that cannot be read or written (a folder, no permission, a full disk)
        where = f"{e.filename}: " if e.filename else ""
        print(f"resnets {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnets: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
