"""`resnets train` end to end: the default run, an ImageFolder of real files, fine-tuning, outputs, bad input."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import resnets
from resnets.cli import main
from resnets.training.config import TrainConfig
from resnets.training.plots import plot_curves

WORDS = ["circle", "stripe", "checker"]
FAST = dict(progress=False, workers=0)  # worker start-up costs more than it saves on these sizes


def pattern_image(label: int, rng: np.random.Generator, size: int = 36) -> np.ndarray:
    img = rng.integers(60, 190, (size, size, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    c = size // 2 + rng.integers(-4, 5, 2)
    if label == 0:
        img[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 < (size // 4) ** 2] = (230, 20, 20)
    elif label == 1:
        img[np.abs(yy - c[0]) < size // 6] = (20, 220, 20)
    else:
        img[((yy // 4 + xx // 4) % 2 == 0)] = (20, 20, 230)
    return img


def make_folder(root: Path, per_class: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for label, word in enumerate(WORDS):
        (root / word).mkdir(parents=True)
        for i in range(per_class):
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(pattern_image(label, rng)).save(root / word / f"img{i}.{ext}")
    return root


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """One short training run on a folder of PNG/JPEG files with word class names."""
    root = tmp_path_factory.mktemp("folder")
    data = make_folder(root / "shapes")
    result = resnets.train(data_dir=str(data), model="cifar_resnet20", epochs=3, batch_size=8, lr=0.05,
                           output=str(root / "runs"), img_size=32, **FAST)
    return data, result


def test_default_config_is_the_digits_demo():
    cfg = TrainConfig().resolved()
    assert cfg.dataset == "digits" and cfg.model.startswith("cifar_") and cfg.hflip == 0.0


@pytest.mark.parametrize("cores,local_procs,device,expected", [
    (16, 1, "cuda", 16), (64, 1, "cuda", 16), (16, 2, "cuda", 8), (16, 1, "cpu", 8), (2, 1, "cpu", 2),
    (1, 2, "cuda", 1)])
def test_default_loader_workers_feed_a_gpu_with_every_core(monkeypatch, cores, local_procs, device, expected):
    from resnets.device import default_workers

    monkeypatch.setattr("os.cpu_count", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_procs))
    assert default_workers(device) == expected
    assert TrainConfig(data_dir="x").resolved().workers is None  # resolved by the trainer, once the device is known
    assert TrainConfig().resolved().workers == 0  # digits: in-memory tensors, no loader processes


def test_default_digits_run_short(tmp_path, monkeypatch):
    """The default run shortened (3 epochs at 16 px instead of 8 at 32): already far above chance (10%)."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    result = resnets.train(epochs=3, img_size=16, output=str(tmp_path), **FAST)
    assert result.best_top1 >= 85.0, result.metrics  # measured: 91.4
    assert result.metrics["val_samples"] == 359 and result.metrics["train_samples"] == 1438
    assert torch.backends.cudnn.benchmark  # not --deterministic: cuDNN picks conv algorithms by timing them


@pytest.mark.parametrize("random_erasing,dtype", [(0.0, torch.uint8), (0.25, torch.float32)])
def test_the_trainer_leaves_normalising_to_the_device_unless_random_erasing(random_erasing, dtype):
    from resnets.models import get_config
    from resnets.training.run import load_data, set_transforms

    cfg = TrainConfig(random_erasing=random_erasing).resolved()
    splits = load_data(cfg)
    set_transforms(splits, cfg, get_config(cfg.model).default_pretrained_cfg())
    assert splits.train[0][0].dtype == dtype
    assert splits.val[0][0].dtype == torch.uint8  # validation never erases


def test_random_erasing_with_ema_trains_and_validates(tmp_path):
    """The one mixed path: float batches (normalised in the workers) to train, uint8 ones to validate; with
    the EMA model validated through the same device normalisation."""
    result = resnets.train(epochs=3, img_size=16, random_erasing=0.25, ema_decay=0.9, output=str(tmp_path), **FAST)
    assert result.best_top1 >= 70.0, result.metrics  # measured: 86.6


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None,
                    reason="torch.compile on the CPU builds C++ kernels: needs a compiler")
def test_compiled_training_saves_plain_weights_and_keeps_its_compile_cache(tmp_path, monkeypatch):
    """--compile on the CPU (inductor's C++ backend): the run trains, best.safetensors loads into a fresh
    model (no `_orig_mod.` keys), and torch.compile's caches land in --cache-dir, not in /tmp."""
    from resnets.models import registry
    from resnets.models.zoo import cifar_resnet_config

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    # A CIFAR ResNet-8 (one block a stage): compiling its forward and backward takes half ResNet-20's 45 s
    # on 2 cores, with every kind of layer and shortcut still in the graph.
    monkeypatch.setitem(registry._MODELS, "cifar_resnet8", lambda: cifar_resnet_config(depth=8))
    result = resnets.train(model="cifar_resnet8", epochs=2, img_size=16, compile=True,
                           cache_dir=str(tmp_path / "cache"), output=str(tmp_path / "runs"), **FAST)
    assert result.best_top1 > 35.0, result.metrics  # measured: 53.5 (chance: 10)
    weights = load_file(str(result.run_dir / "best.safetensors"))
    assert not any(k.startswith("_orig_mod.") for k in weights)
    assert any((tmp_path / "cache" / "inductor").iterdir())


@pytest.mark.parametrize("mode,cuda_graphs", [("reduce-overhead", True), ("max-autotune-no-cudagraphs", False)])
def test_compile_mode_reaches_torch_compile_and_cuda_graph_steps_are_marked(tmp_path, monkeypatch, mode, cuda_graphs):
    compiled, marks = [], []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: compiled.append(mode) or model)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    result = resnets.train(epochs=1, img_size=16, compile=True, compile_mode=mode, output=str(tmp_path), **FAST)
    assert compiled == [mode]
    # CUDA graphs reuse their output memory: each training step must say that the previous one is done
    assert len(marks) == (result.metrics["global_steps"] if cuda_graphs else 0) and result.metrics["global_steps"] > 1


@pytest.mark.parametrize("argv,needle", [
    (["--compile-mode", "reduce-overhead"], "add --compile"),
    (["--compile", "--compile-mode", "reduce-overhead", "--accum-steps", "2"], "cannot accumulate gradients"),
    (["--ddp-static-graph", "--accum-steps", "2"], "--ddp-static-graph cannot accumulate gradients"),
])
def test_compile_mode_and_ddp_mistakes_are_one_line_errors(capsys, argv, needle):
    code, out, err = run_cli(capsys, "train", "--epochs", "1", *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_a_run_compiled_with_cuda_graphs_resumes_without_compiling():
    from resnets.training.resume import resumed_config

    saved = TrainConfig(compile=True, compile_mode="reduce-overhead").resolved().to_dict()
    cfg = resumed_config(TrainConfig(compile=False), {"config": saved}, explicit={"compile"})
    assert not cfg.compile and cfg.compile_mode == "default"
    cfg = resumed_config(TrainConfig(), {"config": saved}, explicit=set())
    assert cfg.compile and cfg.compile_mode == "reduce-overhead"  # not asked: the run's own


@pytest.mark.slow
def test_default_digits_run_reaches_95(tmp_path):
    """The embedded default exactly as `make demo` runs it: at least 95% validation top-1."""
    code = main(["train", "--output", str(tmp_path), "--no-progress"])
    assert code == 0
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "metrics.json").read_text())["best_top1"] >= 95.0


def test_run_directory_is_complete_and_consistent(folder_run):
    data, result = folder_run
    run = result.run_dir
    for name in ["config.yaml", "summary.csv", "curves.png", "metrics.json", "best.safetensors", "last.safetensors",
                 "confusion_matrix.png", "confusion_matrix.csv", "per_class.csv"]:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    resume_files = sorted(p.name for p in run.glob("checkpoint-*.pt"))
    assert resume_files == ["checkpoint-0003-000000006.pt", "checkpoint-0004-000000009.pt"]  # the last 2 kept
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data_dir"] == str(data) and config["epochs"] == 3 and config["dataset"] == "folder"
    # The run's own config.yaml starts it again (it was refused for the keys the run records beside its options)
    from resnets.cli import build_parser
    from resnets.training.config import config_from_args
    again = config_from_args(build_parser().parse_args(["train", "-c", str(run / "config.yaml")]))
    assert again.to_dict() == {k: v for k, v in config.items() if k in again.to_dict()}
    assert again.resolved() == again and config["resolved_device"] == "cpu"

    rows = list(csv.DictReader((run / "summary.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5",
                            "lr", "seconds"}
    val_top1 = [float(r["val_top1"]) for r in rows]

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_top1"] == pytest.approx(max(val_top1), abs=1e-3)
    assert metrics["best_epoch"] == 1 + val_top1.index(max(val_top1))
    assert metrics["class_names"] == sorted(WORDS)
    assert {r["class"] for r in metrics["per_class"]} >= set(WORDS)

    img = Image.open(run / "curves.png")
    assert img.format == "PNG" and img.size == (1000, 400)
    assert len(np.unique(np.asarray(img.convert("L")))) > 10  # drawn, not blank

    best = load_file(str(run / "best.safetensors"))
    assert all(torch.isfinite(t).all() for t in best.values() if t.is_floating_point())
    # best is the improved epoch's weights: the same file as last when the last epoch was the best one
    last_was_best = metrics["best_epoch"] == 3
    assert ((run / "best.safetensors").read_bytes() == (run / "last.safetensors").read_bytes()) == last_was_best
    cm = np.loadtxt(run / "confusion_matrix.csv", delimiter=",", skiprows=1, usecols=range(1, 4))
    assert cm.sum() == metrics["val_samples"] == 6


def test_curves_plot_draws_the_summary_numbers(tmp_path):
    rows = [dict(epoch=e, train_loss=2.0 / e, val_loss=2.5 / e, train_top1=10.0 * e, val_top1=9.0 * e)
            for e in (1, 2, 3)]
    drawn = plot_curves(rows, tmp_path / "c.png")
    assert drawn["val_top1"] == [9.0, 18.0, 27.0] and drawn["train_loss"] == [2.0, 1.0, 2.0 / 3]
    assert Image.open(tmp_path / "c.png").format == "PNG"


def test_folder_run_then_eval_predict_export(folder_run, tmp_path, capsys):
    data, result = folder_run
    run = result.run_dir
    code, out, err = run_cli(capsys, "eval", "--weights", run, "--data-dir", data, "--output", tmp_path / "ev")
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["num_samples"] == 30 and 0 <= report["top1"] <= 100

    files = sorted((data / "circle").iterdir())[:3] + sorted((data / "checker").iterdir())[:2]
    code, out, err = run_cli(capsys, "predict", "--weights", run, "--topk", "2", "--output", tmp_path / "p.csv",
                             *files)
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [Path(r["file"]).name for r in rows] == [f.name for f in files]
    assert all(r["top1_class"] in WORDS for r in rows)

    code, out, err = run_cli(capsys, "export", "--weights", run, "--format", "onnx", "--output",
                             tmp_path / "m.onnx")
    assert code == 0, err
    import onnxruntime as ort

    model = resnets.load_model(run)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32)  # a batch size the export did not use
    (onnx_out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-4)


def test_finetune_from_1000_class_checkpoint_loads_every_backbone_tensor(tmp_path):
    source = resnets.create_model("cifar_resnet20", num_classes=1000)
    source.pretrained_cfg = source.pretrained_cfg.replace(input_size=(3, 48, 48), crop_pct=0.9)
    resnets.models.weights.save_weights(source, tmp_path / "imagenet-style.safetensors")
    result = resnets.train(pretrained=str(tmp_path / "imagenet-style.safetensors"), freeze_backbone=True, epochs=1,
                           output=str(tmp_path / "runs"), **FAST)
    tuned = load_file(str(result.run_dir / "best.safetensors"))
    shipped = resnets.load_model(result.run_dir)  # preprocessing is this run's, not the source checkpoint's
    assert tuple(shipped.pretrained_cfg["input_size"]) == (3, 32, 32) and shipped.pretrained_cfg["crop_pct"] == 1.0
    assert shipped.class_names == [str(d) for d in range(10)]
    assert tuned["fc.weight"].shape == (10, 64)
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert set(backbone) <= set(tuned)
    for key, value in backbone.items():  # frozen: weights and BN statistics exactly as loaded
        assert torch.equal(tuned[key], value), key


def test_yaml_config_and_flags_on_top(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 5\nlr: 2e-1\nname: fromyaml\namp: off\n")  # YAML reads 2e-1 as text, off as False
    from resnets.cli import build_parser
    from resnets.training.config import config_from_args

    args = build_parser().parse_args(["train", "-c", str(cfg_file), "--epochs", "1", "-b", "16"])
    cfg = config_from_args(args)
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.name, cfg.amp) == (1, 0.2, 16, "fromyaml", "off")


@pytest.mark.parametrize("setup,argv,needle", [
    (None, ["--data-dir", "{tmp}/missing"], "missing"),
    ("empty", ["--data-dir", "{tmp}/data"], "no class subfolders"),
    ("one_class", ["--data-dir", "{tmp}/data"], "class"),
    ("singleton", ["--data-dir", "{tmp}/data"], "cherry"),
    (None, ["--model", "resnet5O"], "resnet50"),
    (None, ["--optimizer", "sgd"], "unrecognized"),
    (None, ["--opt", "lbfgs"], "opt"),
    (None, ["--model", "resnet18", "--img-size", "16"], "too small"),
    (None, ["--sched", "step", "--decay-epochs", "0"], "decay-epochs"),
    (None, ["--random-erasing", "2"], "random-erasing"),
    (None, ["--device", "gpu"], "not a device"),
    ("bad_yaml", ["-c", "{tmp}/c.yaml"], "colour"),
    ("bad_milestones", ["-c", "{tmp}/c.yaml"], "decay-milestones"),
    (None, ["--lr", "nan"], "lr"),
    (None, ["--lr", "inf"], "lr"),
    (None, ["--momentum", "-1"], "momentum"),
    (None, ["--seed", "-1"], "seed"),
    (None, ["--seed", str(2**64)], "seed"),  # torch.manual_seed's overflow was a traceback
    (None, ["--warmup-epochs", "nan"], "warmup-epochs"),  # trained at lr 0 without a word
    (None, ["--warmup-epochs", "inf"], "warmup-epochs"),
    (None, ["--weight-decay", "-1"], "weight-decay"),
    (None, ["--mixup", "-1"], "mixup"),
    (None, ["--decay-rate", "-1"], "decay-rate"),
    (None, ["--dist-timeout", "nan"], "dist-timeout"),
    (None, ["--img-size", "0"], "img-size"),
    (None, ["--name", "a/b"], "name"),
    ("bad_yaml", ["--output", "{tmp}/c.yaml"], "a file, not a folder"),  # was 'File exists', after the data loaded
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, setup, argv, needle):
    data = tmp_path / "data"
    if setup == "empty":
        data.mkdir()
        (data / "notes.txt").write_text("not an image")
    elif setup == "one_class":
        make_folder(tmp_path / "all")
        (data).mkdir()
        (tmp_path / "all" / "circle").rename(data / "circle")
    elif setup == "singleton":
        make_folder(data, per_class=4)
        (data / "cherry").mkdir()
        Image.fromarray(pattern_image(0, np.random.default_rng(0))).save(data / "cherry" / "only.png")
    elif setup == "bad_yaml":
        (tmp_path / "c.yaml").write_text("epochs: 1\ncolour: red\n")
    elif setup == "bad_milestones":
        (tmp_path / "c.yaml").write_text("sched: multistep\ndecay_milestones: [a, -3]\n")
    out_dir = tmp_path / "runs"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = run_cli(capsys, "train", "--output", out_dir, "--no-progress", "--epochs", "1", *argv)
    if needle == "unrecognized":  # argparse's own usage error: exit 2 too, pointing at train's own help
        assert err.strip().endswith("(see `resnets train --help`)")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert "Traceback" not in err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_tensorboard_log_has_scalars_and_the_model_graph(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = resnets.train(epochs=1, img_size=16, log_tensorboard=True, output=str(tmp_path), **FAST)
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    assert {"train/loss", "val/top1", "lr"} <= set(events.Tags()["scalars"])
    assert events.Tags()["graph"]  # add_graph wrote the traced model
    (val,) = events.Scalars("val/top1")
    assert val.value == pytest.approx(result.best_top1, abs=1e-3)


def test_list_options_take_several_values_as_flags():
    from resnets.cli import build_parser
    from resnets.training.config import config_from_args

    args = build_parser().parse_args(["train", "--sched", "multistep", "--decay-milestones", "2", "5"])
    assert config_from_args(args).decay_milestones == [2, 5]
