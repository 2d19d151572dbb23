"""Measure one Res2Net lead before building it: the first block of each stage convolves its `scale - 1`
splits independently (3x3 at the block's stride, then BN + ReLU), so one grouped conv and one BN over
all the splits compute the same function with one cuDNN call instead of `scale - 1`.

    python3 benchmarks/res2net_branches.py [--device cuda] [--batch 256] [--amp bf16] [--compile]

For each stage's first block of res2net50_26w_4s at 224x224, times forward + backward of both forms
(channels_last, cuDNN's algorithm timing on) and checks that they agree. A measurement script for
BENCHMARKS.md, not part of the package: the model keeps timm's layout (`convs.i`, `bns.i`) until this
says the grouped form wins.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import resnets
from resnets.models.blocks import Res2Block


def separate(block: Res2Block) -> nn.Module:
    """The splits as the model runs them: one conv + BN + ReLU each."""

    class Separate(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs, self.bns = block.convs, block.bns

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            splits = torch.split(x, block.width, dim=1)
            return torch.cat([F.relu(bn(conv(s))) for s, conv, bn in zip(splits, self.convs, self.bns)], 1)

    return Separate()


def grouped(block: Res2Block) -> nn.Module:
    """The same splits as one grouped conv and one BN, with the separate convs' and BNs' values."""
    n, first = len(block.convs), block.convs[0]
    conv = nn.Conv2d(block.width * n, block.width * n, 3, stride=first.stride, padding=first.padding,
                     dilation=first.dilation, groups=n * first.groups, bias=False)
    bn = nn.BatchNorm2d(block.width * n)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([c.weight for c in block.convs]))
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(torch.cat([getattr(b, name) for b in block.bns]))
    return nn.Sequential(conv, bn, nn.ReLU())


def time_ms(module: nn.Module, x: torch.Tensor, amp: str, steps: int, device: torch.device) -> list[float]:
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16"
                else torch.autocast(device.type, enabled=False))
    times = []
    for i in range(steps + 3):  # 3 warm-up steps: cuDNN's timing and the compiler run there
        x.grad = None
        start = time.perf_counter()
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        with autocast:
            y = module(x)
        y.float().sum().backward()
        if device.type == "cuda":
            end.record()
            end.synchronize()
            elapsed = begin.elapsed_time(end)
        else:
            elapsed = (time.perf_counter() - start) * 1000
        if i >= 3:
            times.append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--amp", choices=["bf16", "off"], default="bf16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    model = resnets.create_model("res2net50_26w_4s").to(device).train()
    rows, size = [], args.img_size // 4  # the stem's stride
    for stage in range(1, 5):
        block = getattr(model, f"layer{stage}")[0]
        assert isinstance(block, Res2Block) and block.is_first
        forms = {"separate": separate(block), "grouped": grouped(block)}
        x = torch.randn(args.batch, block.width * len(block.convs), size, size, device=device)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        with torch.no_grad():  # the same function: compare in fp32 before timing
            a, b = forms["separate"](x), forms["grouped"](x)
        agree = torch.allclose(a, b, rtol=1e-3, atol=1e-3)
        row = dict(stage=stage, shape=list(x.shape), stride=block.convs[0].stride[0], agree=agree)
        for name, module in forms.items():
            run = torch.compile(module) if args.compile else module
            ms = time_ms(run, x, args.amp, args.steps, device)
            row[f"{name}_ms"] = round(statistics.median(ms), 3)
        row["grouped_over_separate"] = round(row["grouped_ms"] / row["separate_ms"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
        size //= block.convs[0].stride[0]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                           torch=torch.__version__, batch=args.batch, amp=args.amp, compile=args.compile,
                           rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
