"""Inference with BatchNorm folded into the convs against the model as trained, in one process, alternating.

    python3 benchmarks/fold_batchnorm.py [--models resnet50 resnet18] [--device cpu] [--batch 8] [--img-size 112]

The A/B behind `resnets.models.inference.for_inference` (predict and eval fold on the CPU): eager fp32,
channels_last and contiguous, median img/s over rounds. Prints one JSON line per model and layout.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import resnets
from resnets.inference.fold import fold_batchnorm


def images_per_second(model: torch.nn.Module, x: torch.Tensor, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        model(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "resnet18"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    for name in args.models:
        for layout in (torch.channels_last, torch.contiguous_format):
            plain = resnets.create_model(name).eval().to(device, memory_format=layout)
            folded = fold_batchnorm(plain).to(memory_format=layout)  # fuse() returns contiguous weights
            x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device).contiguous(memory_format=layout)
            rates: dict[str, list[float]] = {"plain": [], "folded": []}
            with torch.inference_mode():
                torch.testing.assert_close(folded(x), plain(x), rtol=1e-4, atol=1e-4)
                for model in (plain, folded):  # warm-up
                    images_per_second(model, x, 2)
                for _ in range(args.rounds):
                    for key, model in (("plain", plain), ("folded", folded)):
                        rates[key].append(images_per_second(model, x, args.steps))
            medians = {key: statistics.median(v) for key, v in rates.items()}
            print(json.dumps(dict(model=name, device=str(device), torch=torch.__version__, batch=args.batch,
                                  img_size=args.img_size, threads=torch.get_num_threads(),
                                  channels_last=layout is torch.channels_last,
                                  plain_img_s=round(medians["plain"], 1), folded_img_s=round(medians["folded"], 1),
                                  folded_over_plain=round(medians["folded"] / medians["plain"], 3))), flush=True)


if __name__ == "__main__":
    main()
