"""What an export costs: its logits against the eager model's, its top-1 on labelled images, its speed.

Two checks. `check_exact`, for the float32 formats: random inputs at another batch size than the trace's must give
the eager logits to a relative tolerance (a wrong graph fails here, before any data is read). `compare`, for every
format: top-1 of both on the validation images, agreement of the predicted class, the largest logit difference,
and img/s at batch 1 and 32 of both on this machine.
"""
from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import ExportError
from ..messages import first_line
from .formats import Artefact

CHECK_BATCH = 3  # not EXPORT_BATCH: a graph specialised to the trace's batch fails here
RTOL = 1e-4  # of the largest eager logit: float32 kernels of ORT/inductor/OpenVINO reorder sums
SPEED_BATCHES = (1, 32)
SPEED_SECONDS = 1.0  # per measurement, after one warm-up call; at least 3 calls
DEFAULT_MARGIN = 1.0  # top-1 points an export may lose against the eager model


@dataclass
class ExportReport:
    """One table: the eager model against the export, on the same images and this machine."""
    format: str
    images: int  # labelled images compared (0: none given)
    data: str  # where they came from
    top1: dict[str, float | None]  # {"pytorch": %, "export": %}
    agreement: float | None  # % of images where both predict the same class
    max_abs_logit_diff: float | None
    img_per_s: dict[str, dict[str, float]]  # {"pytorch": {"1": ..., "32": ...}, "export": {...}}
    margin: float
    exact_check: dict[str, float] | None = None  # check_exact's figures, float32 formats
    machine: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def top1_drop(self) -> float | None:
        t = self.top1
        return None if t["pytorch"] is None or t["export"] is None else t["pytorch"] - t["export"]

    @property
    def within_margin(self) -> bool:
        return self.top1_drop is None or self.top1_drop <= self.margin

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"top1_drop": self.top1_drop, "within_margin": self.within_margin}

    def table(self) -> str:
        """The figures as a small text table, the way the command prints them."""
        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}%"

        def speed(side: str, batch: int) -> str:
            v = self.img_per_s.get(side, {}).get(str(batch))
            return "-" if v is None else f"{v:,.0f}"

        rows = [("", "top-1", *(f"img/s b{b}" for b in SPEED_BATCHES)),
                ("pytorch (eager)", pct(self.top1["pytorch"]), *(speed("pytorch", b) for b in SPEED_BATCHES)),
                (self.format, pct(self.top1["export"]), *(speed("export", b) for b in SPEED_BATCHES))]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        if self.images:
            lines.append(f"on {self.images:,} images of {self.data}: same class for {self.agreement:.2f}%, "
                         f"max |logit difference| {self.max_abs_logit_diff:.3g}")
        else:
            lines.append("no labelled images: accuracy not measured (give --data-dir)")
        return "\n".join(lines)


def check_exact(model: nn.Module, artefact: Artefact, input_size: tuple[int, int, int], rtol: float = RTOL,
                ) -> dict[str, float]:
    """ExportError unless the float32 export gives the eager logits on random inputs at `CHECK_BATCH` (and,
    for a dynamic size, at a second size too)."""
    gen = torch.Generator().manual_seed(1)
    sizes = [tuple(input_size[1:])]
    if artefact.model.dynamic_size:
        sizes.append((input_size[1] + 32, input_size[2] + 64))  # a size, and an aspect, the trace never saw
    device = next(iter(model.parameters()), torch.empty(0)).device
    worst = tolerance = 0.0
    for h, w in sizes:
        x = torch.randn(CHECK_BATCH, input_size[0], h, w, generator=gen)
        with torch.inference_mode():
            expected = model(x.to(device)).float().cpu().numpy()
        try:
            actual = artefact.model(x).numpy()
        except Exception as e:
            raise ExportError(f"the exported {artefact.format} model does not run at batch {CHECK_BATCH} and "
                              f"{h}x{w}: {type(e).__name__}: {first_line(e)}") from e
        if actual.shape != expected.shape:
            raise ExportError(f"the exported model gives shape {actual.shape} at batch {CHECK_BATCH}, "
                              f"the eager model {expected.shape}")
        diff = float(np.abs(actual - expected).max())
        tol = rtol * max(float(np.abs(expected).max()), 1e-6)
        if not diff <= tol:  # also catches NaN
            raise ExportError(f"the exported {artefact.format} model differs from the eager one by up to "
                              f"{diff:.3g} at {h}x{w} (tolerance {tol:.3g}); nothing written")
        worst, tolerance = max(worst, diff), tol
    return {"batch": CHECK_BATCH, "max_abs_diff": worst, "tolerance": tolerance}


def images_per_second(forward: nn.Module, shape: tuple[int, ...], seconds: float = SPEED_SECONDS) -> float:
    """Throughput of `forward` on random (B, C, H, W) batches: one warm-up call, then calls for `seconds`."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        forward(x)
        calls, start = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - start < seconds:
            forward(x)
            calls += 1
        return calls * shape[0] / (time.perf_counter() - start)


def compare(eager: nn.Module, artefact: Artefact, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            input_size: tuple[int, int, int], data: str = "", margin: float = DEFAULT_MARGIN,
            speed_seconds: float = SPEED_SECONDS) -> ExportReport:
    """The eager model (`for_inference`: what `resnets predict` runs) against the export on labelled `batches`
    of preprocessed images, then both timed at batch 1 and 32."""
    correct, agree, seen, worst = np.zeros(2), 0, 0, 0.0
    with torch.inference_mode():
        for images, targets in batches:
            a = eager(images).float()
            b = artefact.model(images).float()
            worst = max(worst, float((a - b).abs().max()))
            pa, pb = a.argmax(1), b.argmax(1)
            correct += [(pa == targets).sum().item(), (pb == targets).sum().item()]
            agree += int((pa == pb).sum())
            seen += len(targets)
    top1 = {"pytorch": None, "export": None} if not seen else {
        "pytorch": float(100.0 * correct[0] / seen), "export": float(100.0 * correct[1] / seen)}
    speed = {side: {str(b): images_per_second(m, (b, *input_size), speed_seconds) for b in SPEED_BATCHES}
             for side, m in (("pytorch", eager), ("export", artefact.model))}
    return ExportReport(format=artefact.format, images=seen, data=data, top1=top1,
                        agreement=100.0 * agree / seen if seen else None,
                        max_abs_logit_diff=worst if seen else None, img_per_s=speed, margin=margin,
                        machine=machine(), notes=list(artefact.notes))


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; platform.processor() is often empty there)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.machine())
    except OSError:
        return platform.processor() or platform.machine()


def machine() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for package in ("torch", "onnxruntime", "openvino"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return {"cpu": cpu_name(), "threads": str(torch.get_num_threads()),
            "python": platform.python_version(), **versions}
