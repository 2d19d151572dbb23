"""`resnets bench`: images per second of a training or inference step, against torchvision and timm.

Every implementation runs in the same process with the same settings, alternating in rounds so that
clock and thermal drift hit all of them alike. Step times come from CUDA events on the GPU (no host sync
inside the timed loop) and from the wall clock on the CPU.
"""
from __future__ import annotations

import contextlib
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
import torchvision
import yaml
from torch import nn

from ..analysis.flops import count_macs, meta_model
from ..caches import COMPILE_MODES, CUDA_GRAPH_MODES, compile_mode_arg, keep_compile_cache
from ..device import AMP_DTYPES, autocast, resolve_device
from ..errors import ConfigError
from ..inference.fold import fold_batchnorm, for_inference
from ..models import build_model
from ..models.resnet import check_img_size
from ..training.config import TrainConfig
from ..training.step import make_train_step, wrap_step

REFERENCE_LIBS = ("torchvision", "timm")


@dataclass
class BenchSettings:
    model: str = "resnet50"
    mode: str = "train"  # train (forward + backward + SGD momentum step) or infer
    device: str = "auto"
    batch_size: int = 256
    img_size: int | None = None  # default: the model's
    steps: int = 20  # timed steps per implementation per round
    warmup: int = 5  # untimed steps before the first round (compilation happens here)
    rounds: int = 3
    amp: str = "bf16"  # bf16, fp16, off (CPU: off unless asked)
    compile: str = "off"  # off or a torch.compile mode: COMPILE_MODES
    channels_last: bool = True
    cudnn_benchmark: bool = True  # cuDNN times its conv algorithms per shape, as the trainer lets it (CUDA only)
    inductor: dict[str, Any] = field(default_factory=dict)  # torch._inductor.config values while compiling
    compare: tuple[str, ...] = ()
    num_classes: int = 1000


@dataclass
class BenchResult:
    impl: str
    images_per_second: float
    step_ms_median: float
    step_ms_p90: float
    peak_memory_mib: float | None
    mfu: float | None  # model FLOPs (MACs x 2, x 3 for training) per second over the measured matmul peak
    warmup_seconds: float
    step_ms: list[float] = field(repr=False)


def reference_model(lib: str, name: str, num_classes: int) -> nn.Module:
    """The same architecture from torchvision or timm (randomly initialised), or ConfigError."""
    if lib == "torchvision":
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ConfigError(f"torchvision has no {name}")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if lib == "timm":
        try:
            import timm  # a test extra, not a requirement
        except ImportError:
            raise ConfigError("--compare timm needs timm installed (pip install timm)") from None
        if name not in timm.list_models(name):
            raise ConfigError(f"timm has no {name}")
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    raise ConfigError(f"unknown reference {lib!r}; choose from {', '.join(REFERENCE_LIBS)}")


def matmul_peak_flops(device: torch.device) -> float:
    """Measured dense matmul rate, best of three: bf16 on CUDA (8192^3), fp32 on CPU (2048^3), FLOP/s."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, best = (20 if device.type == "cuda" else 5), 0.0
    for _ in range(3):  # the best of three: a busy moment elsewhere on the machine must not lower the peak
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: nn.Module, s: BenchSettings, device: torch.device, ours: bool,
              ) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """One training or inference step. `ours`: resnets' own, for training the trainer's `TrainStep` itself (fused
    SGD, the non-finite guard, the step's statistics); for inference predict's path, BN folded into the convs
    (on CUDA under torch.compile, with bf16 weights; on the CPU in fp32). Otherwise the loop of torchvision's
    reference script: SGD, autocast, cross-entropy, backward, step."""
    if s.mode == "infer":
        return _infer_step(model, s, device, ours)
    if ours:
        return _trainer_step(model, s, device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)
    forward = torch.compile(model, mode=compile_mode_arg(s.compile)) if s.compile != "off" else model

    def train_step(x: torch.Tensor, y: torch.Tensor) -> None:
        if s.compile in CUDA_GRAPH_MODES:  # as the trainer: a new step, the graphs may reuse the last one's memory
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(device, s.amp):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step


def _trainer_step(model: nn.Module, s: BenchSettings, device: torch.device,
                  ) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """`resnets train`'s step with the same SGD settings as the reference loop (momentum 0.9, lr 0.1)."""
    model.train()
    compiled = s.compile != "off"
    cfg = TrainConfig(opt="sgd", lr=0.1, momentum=0.9, weight_decay=5e-5, batch_size=s.batch_size, compile=compiled,
                      compile_mode=s.compile if compiled else "default")
    return wrap_step(make_train_step(model, cfg, model.pretrained_cfg, device, s.amp, s.channels_last), cfg, device)


def _infer_step(model: nn.Module, s: BenchSettings, device: torch.device, ours: bool,
                ) -> Callable[[torch.Tensor, torch.Tensor], None]:
    model.eval()
    low_precision = AMP_DTYPES[s.amp]
    # resnets' inference path folds BN into the convs: on CUDA only under torch.compile (in eager mode the
    # folded convs measured 5-12% slower than conv + BN on an H100: bf16, channels_last, cuDNN's
    # conv-with-bias path), with the weights stored in bf16 once so that autocast does not re-cast every
    # weight on every call; elsewhere in fp32 by predict's and eval's own rule (`for_inference`).
    # Folding writes new (contiguous) weights: they go back to the input's memory format, or cuDNN
    # converts layouts on every call (measured 10% slower on an H100).
    memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
    cast = ours and device.type == "cuda" and low_precision is not None and s.compile != "off"
    if cast:
        model = fold_batchnorm(model).to(low_precision, memory_format=memory_format)
    elif ours and low_precision is None:
        model = for_inference(model, device).to(memory_format=memory_format)
    forward = torch.compile(model, mode=compile_mode_arg(s.compile)) if s.compile != "off" else model

    def infer(x: torch.Tensor, y: torch.Tensor) -> None:
        if cast:
            with torch.inference_mode():
                forward(x.to(low_precision))
        else:
            with torch.inference_mode(), autocast(device, s.amp):
                forward(x)

    return infer


def parse_inductor_settings(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (VALUE read as YAML: true, 8, 0.5, text) -> torch._inductor.config changes."""
    from torch._inductor import config  # seconds to import: only when a setting is given

    changes: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--inductor {item!r}: expected KEY=VALUE, e.g. conv_1x1_as_mm=true")
        value = yaml.safe_load(text)
        if isinstance(value, str) and type(getattr(config, key, None)) is float:
            try:  # YAML 1.1 reads 1e-3 (no dot) as text
                value = float(value)
            except ValueError:
                pass
        changes[key] = value
    return changes


def check_inductor_settings(changes: dict[str, Any]) -> None:
    """ConfigError unless every key is a torch._inductor.config setting and its value has the setting's type."""
    from torch._inductor import config

    for key, value in changes.items():
        if not hasattr(config, key):
            raise ConfigError(f"--inductor {key}: torch._inductor.config has no such setting")
        current = getattr(config, key)
        if type(current) in (bool, int, float, str) and not _fits(value, type(current)):
            raise ConfigError(f"--inductor {key}={value!r}: expected type {type(current).__name__} "
                              f"(it is {current!r} now)")


def _fits(value: Any, kind: type) -> bool:
    if kind is float:
        return type(value) in (int, float)
    return type(value) is kind  # exact: True is an int to isinstance, not to an int setting


@contextlib.contextmanager
def backend_settings(s: BenchSettings) -> Iterator[None]:
    """The bench's process-wide settings for the duration: torch.backends.cudnn.benchmark and the
    torch._inductor.config changes. Process-wide, so every implementation compared runs under the same
    ones; the caller's own are back afterwards."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = s.cudnn_benchmark
    try:
        if s.inductor:
            from torch._inductor import config

            with config.patch(s.inductor):
                yield
        else:
            yield
    finally:
        torch.backends.cudnn.benchmark = before


def run_bench(s: BenchSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    if s.inductor:
        if s.compile == "off":
            raise ConfigError("--inductor changes how torch.compile builds the step: use it with --compile")
        check_inductor_settings(s.inductor)
    with backend_settings(s):
        return _run_bench(s, log)


def _check_settings(s: BenchSettings) -> None:
    if s.mode not in ("train", "infer"):
        raise ConfigError(f"mode {s.mode!r} is not train or infer")
    if s.amp not in AMP_DTYPES:
        raise ConfigError(f"amp {s.amp!r} is not bf16, fp16 or off")
    if s.compile not in ("off", *COMPILE_MODES):
        raise ConfigError(f"compile {s.compile!r} is not off or one of {', '.join(COMPILE_MODES)}")
    if min(s.batch_size, s.steps, s.rounds) < 1 or s.warmup < 0:
        raise ConfigError("batch-size, steps and rounds must be >= 1, warmup >= 0")


def _run_bench(s: BenchSettings, log: Callable[[str], None]) -> dict[str, Any]:
    _check_settings(s)
    if s.compile != "off":
        keep_compile_cache()  # the warm-up column then shows a first run's compilation, later runs' cache reads
    device = resolve_device(s.device)
    shapes = meta_model(s.model, num_classes=s.num_classes)
    size = shapes.pretrained_cfg.input_size[-1] if s.img_size is None else s.img_size
    check_img_size(shapes, size)
    macs, _ = count_macs(shapes, (3, size, size))
    builders: dict[str, Callable[[], nn.Module]] = {"resnets": lambda: build_model(s.model, num_classes=s.num_classes)}
    for lib in s.compare:
        reference_model(lib, s.model, s.num_classes)  # fail early, before any timing
        builders[lib] = lambda lib=lib: reference_model(lib, s.model, s.num_classes)
    memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
    x = torch.randn(s.batch_size, 3, size, size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, s.num_classes, (s.batch_size,), device=device)
    impls = {name: _warmed_up(name, build, s, device, memory_format, x, y, log) for name, build in builders.items()}
    for _ in range(s.rounds):  # in turn, so that drift (clocks, heat, other load) hits every implementation alike
        for impl in impls.values():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            impl["times"] += _time_steps(impl["step"], x, y, s.steps, device)
            if device.type == "cuda":
                impl["peak"] = max(impl["peak"], torch.cuda.max_memory_allocated(device))
    flops_per_image = macs * 2 * (3 if s.mode == "train" else 1)  # a backward costs about two forwards
    peak_flops = matmul_peak_flops(device)
    results = [_result(name, impl, s.batch_size, flops_per_image, peak_flops) for name, impl in impls.items()]
    return dict(settings=asdict(s), device=_device_name(device), torch=torch.__version__,
                versions=_versions(), img_size=size, gmacs_per_image=macs / 1e9,
                peak_matmul_tflops=peak_flops / 1e12, results=[asdict(r) for r in results])


def _warmed_up(name: str, build: Callable[[], nn.Module], s: BenchSettings, device: torch.device,
               memory_format: torch.memory_format, x: torch.Tensor, y: torch.Tensor,
               log: Callable[[str], None]) -> dict[str, Any]:
    """An implementation's model and step, after its untimed warm-up steps (compilation, cuDNN's choices)."""
    torch.manual_seed(0)
    model = build().to(device, memory_format=memory_format)
    step = make_step(model, s, device, ours=name == "resnets")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(max(1, s.warmup)):
        step(x, y)
    _sync(device)
    impl = dict(model=model, step=step, warmup=time.perf_counter() - t0, times=[],
                peak=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None)
    log(f"{name}: warm-up {impl['warmup']:.1f}s")
    return impl


def _result(name: str, impl: dict[str, Any], batch_size: int, flops_per_image: float, peak_flops: float,
            ) -> BenchResult:
    times = sorted(impl["times"])
    median = statistics.median(times)
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    ips = batch_size / (median / 1000)
    return BenchResult(name, ips, median, p90, impl["peak"] / 2**20 if impl["peak"] else None,
                       ips * flops_per_image / peak_flops, impl["warmup"], impl["times"])


def _time_steps(step: Callable, x: torch.Tensor, y: torch.Tensor, n: int, device: torch.device) -> list[float]:
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in events:
            start.record()
            step(x, y)
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step(x, y)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _versions() -> dict[str, str]:
    versions = {"torch": torch.__version__}
    for lib in REFERENCE_LIBS:
        try:
            versions[lib] = __import__(lib).__version__
        except ImportError:
            pass
    return versions


def format_table(report: dict[str, Any]) -> str:
    results = report["results"]
    ours = next(r for r in results if r["impl"] == "resnets")
    s = report["settings"]
    lines = [f"{s['model']} {s['mode']} on {report['device']}: batch {s['batch_size']}, {report['img_size']}px, "
             f"amp {s['amp']}, compile {s['compile']}{_inductor_note(s)}, channels_last {s['channels_last']}; "
             f"matmul peak {report['peak_matmul_tflops'] * 1000:,.0f} GFLOP/s",
             f"{'impl':<12} {'img/s':>10} {'resnets/x':>9} {'ms p50':>8} {'ms p90':>8} {'peak MiB':>9} "
             f"{'MFU':>6} {'warm-up s':>9}"]
    for r in results:
        ratio = ours["images_per_second"] / r["images_per_second"]
        mem = f"{r['peak_memory_mib']:,.0f}" if r["peak_memory_mib"] else "-"
        lines.append(f"{r['impl']:<12} {r['images_per_second']:>10,.1f} {ratio:>9.3f} {r['step_ms_median']:>8.2f} "
                     f"{r['step_ms_p90']:>8.2f} {mem:>9} {100 * r['mfu']:>5.1f}% {r['warmup_seconds']:>9.1f}")
    return "\n".join(lines)


def _inductor_note(settings: dict[str, Any]) -> str:
    changes = settings.get("inductor") or {}
    return f" ({', '.join(f'{k}={v}' for k, v in changes.items())})" if changes else ""
