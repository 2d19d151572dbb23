"""`resnets export`: arguments and printing; the work is in `pipeline.py`."""
from __future__ import annotations

import argparse
import sys

from ..device import resolve_device
from ..hub import load_model
from ..options import add_weights_arguments
from .check import DEFAULT_MARGIN, SPEED_SECONDS
from .formats import CALIBRATION_METHODS, DEFAULT_NAMES, FORMATS
from .pipeline import (DEFAULT_CALIBRATION_IMAGES, DEFAULT_CHECK_IMAGES, AccuracyDropError, check_export_output,
                       default_output, export_model)

ACCURACY_DROP_EXIT = 3  # not 2: nothing the user typed was wrong; the export does not keep the model's accuracy


def add_export(p: argparse.ArgumentParser) -> None:
    p.description = ("Export, check the result against the eager model (logits, top-1 on the run's val split, "
                     "img/s at batch 1 and 32), and write it with its report (FILE.json) only if it holds up.")
    add_weights_arguments(p)
    p.add_argument("--format", default="onnx", choices=FORMATS,
                   help="onnx: float32; onnx-int8: quantized, calibrated on the run's training images; onnx-fp16: "
                        "for GPU runtimes; pt2: torch.export; openvino: OpenVINO IR (pip install "
                        "'resnets[openvino]'); triton: a Triton model repository [default: onnx]")
    p.add_argument("--output", default=None, metavar="PATH",
                   help="default: beside the weights, " + ", ".join(f"{n} for {f}" for f, n in DEFAULT_NAMES.items()))
    p.add_argument("--img-size", type=int, default=None, metavar="PX",
                   help="input size of the graph (default: the weights' own)")
    p.add_argument("--dynamic-size", action="store_true",
                   help="height and width dynamic too, not only the batch (any size down to the last stride)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="where to trace: cpu, cuda, cuda:N or auto [default: cpu]")
    check = p.add_argument_group("checks (on the run's own val split, from its config.yaml)")
    check.add_argument("--data-dir", default=None, metavar="DIR",
                       help="labelled images to compare on instead (DIR/val, else DIR/test, else DIR)")
    check.add_argument("--check-images", type=int, default=DEFAULT_CHECK_IMAGES, metavar="N",
                       help=f"compare on at most N of them, a fixed random draw; 0: speed alone "
                            f"[default: {DEFAULT_CHECK_IMAGES}]")
    check.add_argument("--margin", type=float, default=DEFAULT_MARGIN, metavar="POINTS",
                       help=f"top-1 points the export may lose; more is an error (exit {ACCURACY_DROP_EXIT}) and no "
                            f"file [default: {DEFAULT_MARGIN:g}]")
    check.add_argument("--allow-accuracy-drop", action="store_true", help="write it even when it loses more")
    check.add_argument("--time-s", type=float, default=SPEED_SECONDS, metavar="S",
                       help=f"seconds of each img/s measurement [default: {SPEED_SECONDS:g}]")
    calib = p.add_argument_group("int8 calibration (on the run's training split)")
    calib.add_argument("--calibration-dir", default=None, metavar="DIR",
                       help="images to calibrate on instead (DIR/train, else DIR)")
    calib.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                       help=f"[default: {DEFAULT_CALIBRATION_IMAGES}]")
    calib.add_argument("--calibration-method", default="minmax", choices=CALIBRATION_METHODS,
                       help="activation ranges: observed extremes, a percentile, or entropy [default: minmax]")


def run_export(args: argparse.Namespace) -> int:
    resolve_device(args.device)  # a mistake there is found now, not after loading the model
    output = args.output or default_output(args.weights, args.format)
    check_export_output(output, args.format, args.weights)  # before loading the model
    model = load_model(args.weights, args.model)
    try:
        r = export_model(model, output, args.format, img_size=args.img_size, dynamic_size=args.dynamic_size,
                         opset=args.opset, weights=args.weights, device=args.device, data_dir=args.data_dir,
                         calibration_dir=args.calibration_dir, calibration_images=args.calibration_images,
                         calibration_method=args.calibration_method, check_images=args.check_images,
                         margin=args.margin, allow_accuracy_drop=args.allow_accuracy_drop,
                         speed_seconds=args.time_s)
    except AccuracyDropError as e:
        print(e.report.table())
        print(f"resnets export: ACCURACY DROP: {e}", file=sys.stderr)
        return ACCURACY_DROP_EXIT
    for note in r.report.notes:
        print(note)
    if r.report.exact_check:
        c = r.report.exact_check
        print(f"check at batch {c['batch']}: max |exported - eager| {c['max_abs_diff']:.3g} "
              f"(tolerance {c['tolerance']:.3g})")
    print(r.report.table())
    if not r.report.within_margin:
        print(f"warning: top-1 {r.report.top1_drop:.2f} points below the model's, written as "
              f"--allow-accuracy-drop asks", file=sys.stderr)
    shape = ", ".join(map(str, r.input_shape))
    print(f"wrote {r.paths[0]} ({r.format}, input ({shape}), {len(r.metadata['class_names'])} classes); "
          f"report {r.paths[-1]}")
    return 0


COMMANDS = {"export": (add_export, run_export)}
