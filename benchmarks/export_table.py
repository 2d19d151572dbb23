"""The export table: every format of `resnets export` against the eager model, on one run's val split.

    python benchmarks/export_table.py RUN_OR_WEIGHTS [--formats onnx,onnx-int8,onnx-fp16,openvino,pt2]
        [--img-size PX] [--data-dir DIR] [--time-s 3] [--results FILE.jsonl] [--label NAME]

Each format goes through `export_model` as `resnets export` runs it (written into a temporary folder, then
deleted): top-1 of the eager model and of the export on the same images, agreement of the predicted class, the
largest logit difference, and img/s at batch 1 and 32 of both, on this machine. One JSON line per format is
appended to benchmarks/results/<date>-cpu-export.jsonl; a markdown table follows. Formats whose runtime is not
installed (openvino) are skipped with a note. Run it on a quiet machine: the img/s figures are the point.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from resnets.errors import ResnetsError
from resnets.export.formats import DEFAULT_NAMES
from resnets.export.pipeline import export_model
from resnets.hub import load_model

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights")
    p.add_argument("--formats", default="onnx,onnx-int8,onnx-fp16,openvino,pt2")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--time-s", type=float, default=3.0)
    p.add_argument("--check-images", type=int, default=2000)
    p.add_argument("--label", default=None, help="the row's name (default: the architecture)")
    p.add_argument("--results", default=str(RESULTS / f"{datetime.date.today()}-cpu-export.jsonl"))
    args = p.parse_args()

    model = load_model(args.weights).eval()
    rows = []
    for format in args.formats.split(","):
        if format == "openvino" and importlib.util.find_spec("openvino") is None:
            print(f"skipped {format}: pip install 'resnets[openvino]'", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory(prefix="export-table-") as tmp:
            try:
                r = export_model(model, Path(tmp) / DEFAULT_NAMES[format], format, img_size=args.img_size,
                                 weights=args.weights, data_dir=args.data_dir, speed_seconds=args.time_s,
                                 check_images=args.check_images, allow_accuracy_drop=True)
            except ResnetsError as e:
                print(f"{format}: {e}", file=sys.stderr)
                continue
            size = sum(f.stat().st_size for f in r.paths[:-1] if f.is_file()) or sum(
                f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file() and f.suffix != ".json")
        row = {"label": args.label or model.arch_name, "weights": str(args.weights), **r.report.to_json(),
               "input_shape": list(r.input_shape), "file_mb": round(size / 2**20, 2),
               "load_average": os.getloadavg()[0], "torch_threads": torch.get_num_threads(),
               "date": datetime.datetime.now().isoformat(timespec="seconds")}
        rows.append(row)
        print(r.report.table(), file=sys.stderr)
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    lines = ["| model | format | MB | top-1 eager / export | agreement | max abs logit diff | img/s b1 eager / export "
             "| img/s b32 eager / export |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, s = r["top1"], r["img_per_s"]
        top1 = "-" if t["pytorch"] is None else f"{t['pytorch']:.2f} / {t['export']:.2f}"
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.2f}%"
        diff = "-" if r["max_abs_logit_diff"] is None else f"{r['max_abs_logit_diff']:.2g}"
        lines.append(f"| {r['label']} | {r['format']} | {r['file_mb']} | {top1} | {agree} | {diff} | "
                     f"{s['pytorch']['1']:,.0f} / {s['export']['1']:,.0f} | "
                     f"{s['pytorch']['32']:,.0f} / {s['export']['32']:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
