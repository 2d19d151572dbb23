"""CLI subcommands for the tasks (eval, predict, export, cam): argument parsing and printing only."""
from __future__ import annotations

import argparse
import sys


def cmd_eval(args: argparse.Namespace) -> int:
    from ..reports import format_report
    from .evaluate import evaluate_checkpoint

    s = evaluate_checkpoint(args.checkpoint, args.data_dir, model_name=args.model, batch_size=args.batch_size,
                            workers=args.workers, device=args.device, img_size=args.img_size,
                            output_dir=args.output, max_bad_fraction=args.max_bad_fraction)
    skipped = f" ({s.unreadable_files:,} unreadable, skipped)" if s.unreadable_files else ""
    print(f"{s.checkpoint} on {s.data_dir}: {s.num_samples:,} images{skipped}")
    print(f"top-1 {s.top1:.2f}%  top-5 {s.top5:.2f}%  loss {s.loss:.4f}")
    print(format_report(s.per_class))
    print(f"wrote {', '.join(s.files.values())}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..fileio import atomic_write_text
    from ..models.weights import load_model
    from .predict import check_output_path, check_topk, predict_images, predictions_csv

    if args.output:
        check_output_path(args.output, args.checkpoint, args.paths)  # before any work
    model = load_model(args.checkpoint, args.model)
    check_topk(args.topk, model.num_classes)  # before reading any image
    preds = predict_images(model, args.paths, topk=args.topk, batch_size=args.batch_size, device=args.device)
    text = predictions_csv(preds)
    if args.output:
        atomic_write_text(args.output, text)
        print(f"wrote {len(preds)} predictions to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..models.weights import load_model
    from .export import export_model

    model = load_model(args.checkpoint, args.model)
    r = export_model(model, args.output, args.format, img_size=args.img_size, opset=args.opset,
                     checkpoint=args.checkpoint)
    shape = ", ".join(["batch", *map(str, r.input_shape[1:])])
    print(f"check at batch {r.check_batch} (traced at {r.input_shape[0]}): max |exported - eager| "
          f"{r.max_abs_diff:.3g} (tolerance {r.tolerance:.3g})")
    print(f"wrote {r.path} ({r.format}, input ({shape}), {len(r.metadata['class_names'])} classes)")
    return 0


def cmd_cam(args: argparse.Namespace) -> int:
    from ..models.weights import load_model
    from .cam import cam_images
    from .common import beside_checkpoint

    model = load_model(args.checkpoint, args.model)
    out = args.output or beside_checkpoint(args.checkpoint, "cam")
    written = cam_images(model, args.images, out, layer=args.layer, class_index=args.class_index,
                         batch_size=args.batch_size, device=args.device, checkpoint=args.checkpoint)
    for png, result in written:
        print(png)
    print(f"wrote {len(written)} Grad-CAM image(s) to {out}")
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR|FILE",
                   help="run directory (its best weights), save_pretrained folder, or weights file")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="architecture of a bare state dict (resnets files carry their own)")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register eval, predict, export and cam on the top-level parser."""
    p = sub.add_parser("eval", help="accuracy, per-class report and confusion matrix on an image folder",
                       description="Evaluate a checkpoint on DIR/val, else DIR/test, else DIR (class subfolders).")
    _model_args(p)
    p.add_argument("--data-dir", required=True, metavar="DIR")
    p.add_argument("-b", "--batch-size", type=int, default=64)
    p.add_argument("-j", "--workers", type=int, default=2, help="data loading processes")
    _device_arg(p)
    p.add_argument("--img-size", type=int, default=None, help="evaluate at this size (default: the checkpoint's)")
    p.add_argument("--output", default=None, metavar="DIR", help="default: eval/ beside the checkpoint")
    p.add_argument("--max-bad-fraction", type=float, default=0.01, metavar="F",
                   help="unreadable images are skipped and listed in bad_files.csv; a larger share is an error "
                        "[default: 0.01]")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes of image files (CSV)",
                       description="Classify images; preprocessing and class names come from the checkpoint.")
    _model_args(p)
    p.add_argument("--topk", type=int, default=None, metavar="K", help="default: 5, or all classes if fewer")
    p.add_argument("--output", default=None, metavar="FILE.csv", help="default: print the CSV")
    p.add_argument("-b", "--batch-size", type=int, default=32)
    _device_arg(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="ONNX or .pt2 with a dynamic batch size, checked against the model",
                       description="Export, run the result at another batch size, compare with the eager "
                                   "model, and write the file only if they agree.")
    _model_args(p)
    p.add_argument("--format", required=True, choices=("onnx", "pt2"))
    p.add_argument("--output", required=True, metavar="FILE", help="FILE.onnx or FILE.pt2, as --format")
    p.add_argument("--img-size", type=int, default=None, help="input size of the graph (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("cam", help="Grad-CAM heatmaps over images (PNG)",
                       description="Grad-CAM (Selvaraju et al. 2017) of the last stage, or of --layer.")
    _model_args(p)
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="any module name, e.g. layer3 or layer4.2 (default: the last stage)")
    p.add_argument("--class-index", type=int, default=None, metavar="N", help="default: the predicted class")
    p.add_argument("--output", default=None, metavar="DIR", help="default: cam/ beside the checkpoint")
    p.add_argument("-b", "--batch-size", type=int, default=16)
    _device_arg(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.set_defaults(func=cmd_cam)
