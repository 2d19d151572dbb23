"""`resnets eval`, `predict` and `cam`: arguments and printing; the work is in the modules beside."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.images import MAX_IMAGE_MB, max_image_bytes
from ..device import resolve_device
from ..fileio import atomic_write_bytes
from .exported import load_classifier
from ..hub import load_model
from ..messages import printable
from ..options import add_device_argument, add_max_image_argument, add_weights_arguments, add_workers_argument
from ..per_image import DEFAULT_TOP_LOSSES
from ..reports import format_report
from .cam import cam_images
from .evaluate import EvalSummary, evaluate_weights
from .outputs import beside_weights, check_output
from .predict import check_topk, predict_images, predictions_csv
from .tta import FLIP, FLIP_SIZE, TTAConfig


def add_tta_arguments(p: argparse.ArgumentParser, use: str) -> None:
    p.add_argument("--tta", action="store_true",
                   help=f"test-time augmentation: the mean probability of each image and its mirror, {use}")
    p.add_argument("--tta-size", type=int, default=None, metavar="PX",
                   help="--tta, and both views again resized to PX x PX: can help weights trained with "
                        "RandomResizedCrop (FixRes: about 1.15 x their training size), rarely pad-and-crop ones")


def tta_config(args: argparse.Namespace) -> TTAConfig | None:
    return TTAConfig(args.tta_size) if args.tta or args.tta_size is not None else None


def print_figures(s: EvalSummary) -> None:
    """Top-1, top-5 and loss, each with the TTA asked for beside it; with a size, the flips alone below."""
    tta = s.tta.get(FLIP_SIZE) or s.tta.get(FLIP)
    if tta is None:
        print(f"top-1 {s.top1:.2f}%  top-5 {s.top5:.2f}%  loss {s.loss:.4f}")
        return
    print(f"top-1 {s.top1:.2f}% (TTA: {tta['top1']:.2f}%)  top-5 {s.top5:.2f}% (TTA: {tta['top5']:.2f}%)  "
          f"loss {s.loss:.4f} (TTA: {tta['loss']:.4f})")
    if tta["size"] is None:
        print("TTA: the mean probability of 2 views, image and mirror")
    else:
        flip = s.tta[FLIP]
        print(f"TTA: the mean probability of 4 views, image and mirror at the test size and at {tta['size']}px; "
              f"the 2 at the test size alone: top-1 {flip['top1']:.2f}%  top-5 {flip['top5']:.2f}%  "
              f"loss {flip['loss']:.4f}")


def add_eval(p: argparse.ArgumentParser) -> None:
    p.description = "Evaluate weights on DIR/val, else DIR/test, else DIR (class subfolders)."
    add_weights_arguments(p)
    p.add_argument("--data-dir", required=True, metavar="DIR")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="[default: 64]")
    add_workers_argument(p, "the cores, at most 16 feeding a GPU, 8 the CPU")
    add_device_argument(p)
    p.add_argument("--img-size", type=int, default=None, metavar="PX",
                   help="evaluate at this size (default: the weights' own)")
    p.add_argument("--output", default=None, metavar="DIR", help="default: eval/ beside the weights")
    p.add_argument("--max-bad-fraction", type=float, default=0.01, metavar="F",
                   help="unreadable images are skipped and listed in bad_files.csv; a larger share is an error "
                        "[default: 0.01]")
    add_max_image_argument(p, MAX_IMAGE_MB)
    p.add_argument("--top-losses", type=int, default=DEFAULT_TOP_LOSSES, metavar="N",
                   help=f"top_losses.png shows the N highest-loss mistakes; 0: none [default: {DEFAULT_TOP_LOSSES}]")
    p.add_argument("--top-losses-cam", action="store_true",
                   help="overlay each of them with the Grad-CAM of the class the model predicted")
    add_tta_arguments(p, "reported beside the plain figures (the files stay the plain model's)")


def run_eval(args: argparse.Namespace) -> int:
    resolve_device(args.device)  # a mistake there is found now, not after loading the model
    max_image_bytes(args.max_image_mb)
    s = evaluate_weights(args.weights, args.data_dir, model_name=args.model, output_dir=args.output,
                         batch_size=args.batch_size, workers=args.workers, device=args.device,
                         img_size=args.img_size, max_bad_fraction=args.max_bad_fraction,
                         max_image_mb=args.max_image_mb, top_losses=args.top_losses,
                         top_losses_cam=args.top_losses_cam, tta=tta_config(args))
    skipped = f" ({s.unreadable_files:,} unreadable, skipped)" if s.unreadable_files else ""
    print(f"{s.weights} on {s.data_dir}: {s.num_samples:,} images{skipped}")
    print_figures(s)
    print(format_report(s.per_class))
    if s.confused_pairs:
        print("most confused (true -> predicted): " + ", ".join(
            f"{printable(p['true'])} -> {printable(p['predicted'])} {p['count']:,}" for p in s.confused_pairs[:5]))
    print(f"wrote {', '.join(s.files.values())}")
    return 0


def add_predict(p: argparse.ArgumentParser) -> None:
    p.description = "Classify images; preprocessing and class names come from the weights."
    add_weights_arguments(p)
    p.add_argument("--topk", type=int, default=None, metavar="K", help="default: 5, or all classes if fewer")
    p.add_argument("--output", default=None, metavar="FILE.csv", help="default: print the CSV")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="[default: 32]")
    add_device_argument(p)
    add_max_image_argument(p, MAX_IMAGE_MB)
    add_tta_arguments(p, "in place of the image's alone; mirrors are wrong for digits and text, so check "
                         "with `resnets eval --tta` that it helps")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")


def run_predict(args: argparse.Namespace) -> int:
    resolve_device(args.device)  # a mistake there is found now, not after loading the model
    max_image_bytes(args.max_image_mb)
    if args.output:
        check_output(args.output, args.weights, args.paths)  # before any work
    model = load_classifier(args.weights, args.model)
    check_topk(args.topk, model.num_classes)  # before reading any image
    preds = predict_images(model, args.paths, topk=args.topk, batch_size=args.batch_size, device=args.device,
                           max_image_mb=args.max_image_mb, tta=tta_config(args))
    text = predictions_csv(preds)
    if args.output:
        atomic_write_bytes(args.output, text.encode("utf-8"))  # as csv_text made it: CRLF, UTF-8
        print(f"wrote {len(preds)} predictions to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def add_cam(p: argparse.ArgumentParser) -> None:
    p.description = "Grad-CAM (Selvaraju et al. 2017) of the last stage, or of --layer."
    add_weights_arguments(p)
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="any module name, e.g. layer3 or layer4.2 (default: the last stage)")
    p.add_argument("--class-index", type=int, default=None, metavar="N", help="default: the predicted class")
    p.add_argument("--output", default=None, metavar="DIR", help="default: cam/ beside the weights")
    p.add_argument("-b", "--batch-size", type=int, default=16, help="[default: 16]")
    add_device_argument(p)
    add_max_image_argument(p, MAX_IMAGE_MB)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")


def run_cam(args: argparse.Namespace) -> int:
    resolve_device(args.device)  # a mistake there is found now, not after loading the model
    max_image_bytes(args.max_image_mb)
    model = load_model(args.weights, args.model)
    out = args.output or (beside_weights(args.weights, "cam") if args.weights and Path(args.weights).exists()
                          else Path("cam"))
    written = cam_images(model, args.images, out, layer=args.layer, class_index=args.class_index,
                         batch_size=args.batch_size, device=args.device, weights=args.weights,
                         max_image_mb=args.max_image_mb)
    for png, result in written:
        print(png)
    print(f"wrote {len(written)} Grad-CAM image(s) to {out}")
    return 0


COMMANDS = {"eval": (add_eval, run_eval), "predict": (add_predict, run_predict),
            "cam": (add_cam, run_cam)}
