"""`resnets bench` on the CPU at tiny sizes: every implementation runs, the report is complete and honest."""
import json
import os

import pytest
import torch

import resnets

from resnets.bench.model import BenchSettings, make_step, reference_model, run_bench
from resnets.cli import main
from resnets.errors import ConfigError

TINY = dict(device="cpu", batch_size=2, img_size=32, steps=2, warmup=1, rounds=2, amp="off")


def test_bench_train_against_references_reports_every_impl():
    report = run_bench(BenchSettings(model="resnet18", mode="train", compare=("torchvision", "timm"), **TINY),
                       log=lambda m: None)
    impls = {r["impl"]: r for r in report["results"]}
    assert set(impls) == {"resnets", "torchvision", "timm"}
    for r in impls.values():
        assert len(r["step_ms"]) == 2 * 2  # rounds x steps, alternating
        assert r["images_per_second"] == pytest.approx(2 / (r["step_ms_median"] / 1000))
        assert r["step_ms_p90"] >= r["step_ms_median"] > 0 and 0 < r["mfu"] < 1
    # MACs per image of resnet18 at 32 px: conv1 + stages + fc, as the flop counter measures them
    assert report["gmacs_per_image"] == pytest.approx(0.0377, rel=0.02)
    assert report["versions"]["torch"] == torch.__version__


def test_train_step_updates_weights_and_infer_does_not():
    model = resnets.cifar_resnet(8, num_classes=10)  # resnets' side of the bench: the trainer's own step
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    before = [p.detach().clone() for p in model.parameters()]
    make_step(model, BenchSettings(mode="train", **{k: v for k, v in TINY.items() if k != "device"}),
              torch.device("cpu"), ours=True)(x, y)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    after_train = [p.detach().clone() for p in model.parameters()]
    make_step(model, BenchSettings(mode="infer", **{k: v for k, v in TINY.items() if k != "device"}),
              torch.device("cpu"), ours=True)(x, y)
    assert all(torch.equal(a, b) for a, b in zip(after_train, model.parameters()))


@pytest.mark.parametrize("flag,expected", [([], True), (["--no-cudnn-benchmark"], False)])
def test_bench_cli_writes_json_and_table(tmp_path, capsys, monkeypatch, flag, expected):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not expected)
    seen = []
    monkeypatch.setattr("resnets.bench.model._time_steps",
                        lambda *a: seen.append(torch.backends.cudnn.benchmark) or [1.0])
    code = main(["bench", "--model", "cifar_resnet20", "--device", "cpu", "-b", "2", "--steps", "1", "--warmup", "1",
                 "--rounds", "1", "--mode", "infer", "--json", str(tmp_path / "b.json"), *flag])
    out = capsys.readouterr().out
    assert code == 0 and "cifar_resnet20 infer on cpu" in out and "resnets" in out
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["settings"]["mode"] == "infer" and report["img_size"] == 32
    # timed under the asked setting, recorded, and the process's own setting back afterwards
    assert seen == [expected] and report["settings"]["cudnn_benchmark"] is expected
    assert torch.backends.cudnn.benchmark is (not expected)


@pytest.mark.parametrize("argv,needle", [
    (["--model", "cifar_resnet20", "--compare", "timm"], "timm has no cifar_resnet20"),
    (["--model", "resnet18", "--compare", "keras"], "unknown reference"),
    (["--model", "resnet18", "--img-size", "8"], "too small"),
    (["--model", "resnet18", "--steps", "0"], "must be >= 1"),
    (["--model", "resnet18", "--data", "/nonexistent/folder"], "not a folder of images"),
    (["--model", "resnet18", "--data", ".", "--mode", "infer"], "use it with --mode train"),
    (["--model", "resnet18", "--compile", "default", "--inductor", "no_such_knob=1"], "has no such setting"),
    (["--model", "resnet18", "--compile", "default", "--inductor", "conv_1x1_as_mm=3"], "expected type bool"),
    (["--model", "resnet18", "--compile", "default", "--inductor", "conv_1x1_as_mm"], "expected KEY=VALUE"),
    (["--model", "resnet18", "--inductor", "conv_1x1_as_mm=true"], "use it with --compile"),
    (["--model", "resnet18", "--compile", "default", "--inductor", "precompilation_timeout_seconds=true"],
     "expected type int"),  # True is an int to isinstance, not to an int setting
])
def test_bench_bad_input_is_one_line_exit_2(capsys, argv, needle):
    code = main(["bench", "--device", "cpu", "-b", "1", *argv])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is present")
def test_bench_cuda_without_gpu_is_a_clear_error(capsys):
    assert main(["bench", "--device", "cuda", "--model", "resnet18"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_reference_model_matches_architecture():
    assert sum(p.numel() for p in reference_model("timm", "res2net50_26w_4s", 1000).parameters()) == 25_699_120
    with pytest.raises(ConfigError):
        reference_model("torchvision", "res2net50_26w_4s", 1000)


def test_bench_data_dir_times_every_stage_of_the_input_pipeline(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(12):
            image = Image.fromarray(rng.integers(0, 255, (40 + i, 36, 3), dtype=np.uint8))
            image.save(tmp_path / "data" / name / f"{i}.jpg")
    (tmp_path / "data" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    code = main(["bench", "--model", "cifar_resnet20", "--device", "cpu", "-b", "4", "--steps", "2", "--warmup", "1",
                 "--rounds", "1", "--data", str(tmp_path / "data"), "-j", "0", "--json", str(tmp_path / "r.json")])
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    stages = {row["stage"]: row["images_per_second"] for row in report["data_stages"]}
    assert set(stages) == {"files -> batches", "files -> device batches", "files -> memory", "cache -> memory",
                           "memory -> batches", "step <- files", "step <- device decode", "step <- memory",
                           "step <- synthetic"}
    assert all(v > 0 for v in stages.values())
    assert "memory -> batches" in capsys.readouterr().out


def test_compile_caches_are_kept_beside_resnets_other_caches(tmp_path, monkeypatch):
    from resnets.caches import keep_compile_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert keep_compile_cache(tmp_path) == tmp_path / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    # a later run in the same process with another --cache-dir moves too: the first value was ours
    assert keep_compile_cache(tmp_path / "other") == tmp_path / "other" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's choice wins
    assert keep_compile_cache(tmp_path) == tmp_path / "mine"
    # torch writes its /tmp default there when torch._dynamo is imported: not a choice, replaced
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", torch_default())
    assert keep_compile_cache(tmp_path) == tmp_path / "inductor"


def test_inductor_settings_hold_while_compiling_and_timing_and_are_recorded(tmp_path, capsys, monkeypatch):
    from torch._inductor import config

    seen = []

    def fake_compile(model, mode=None):  # records the config that a real compile would read, without the wait
        seen.append(("compile", config.conv_1x1_as_mm, config.freezing))
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr("resnets.bench.model._time_steps",
                        lambda *a: seen.append(("time", config.conv_1x1_as_mm, config.freezing)) or [1.0])
    code = main(["bench", "--model", "cifar_resnet20", "--device", "cpu", "-b", "2", "--steps", "1", "--rounds", "1",
                 "--compile", "default", "--inductor", "conv_1x1_as_mm=true", "--inductor", "freezing=yes",
                 "--json", str(tmp_path / "b.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "compile default (conv_1x1_as_mm=True, freezing=True)" in out
    assert seen == [("compile", True, True), ("time", True, True)]
    assert json.loads((tmp_path / "b.json").read_text())["settings"]["inductor"] == {"conv_1x1_as_mm": True,
                                                                                   "freezing": True}
    assert not config.conv_1x1_as_mm and not config.freezing  # the process's own settings are back


def test_inductor_values_are_read_as_the_setting_needs():
    from resnets.bench.model import check_inductor_settings, parse_inductor_settings

    changes = parse_inductor_settings(["cpu_gpu_bw=1e-3", "max_autotune_subproc_result_timeout_seconds=30",
                                       "conv_1x1_as_mm=true"])
    assert changes == {"cpu_gpu_bw": 0.001, "max_autotune_subproc_result_timeout_seconds": 30,
                       "conv_1x1_as_mm": True}  # 1e-3 is text to YAML 1.1; a float setting takes it as a number
    check_inductor_settings(changes)  # an int for a float setting is fine


def test_res2net_first_block_branches_as_one_grouped_conv_compute_the_same(tmp_path):
    # the script that decides the Res2Net grouped-branch lead on a GPU: both forms must be one function
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "res2net_branches.py"), "--device", "cpu",
                           "--batch", "2", "--img-size", "32", "--steps", "1", "--amp", "off", "--json", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root / "src")})
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["stride"] for r in rows] == [1, 2, 2, 2] and all(r["agree"] for r in rows)
    assert [r["shape"][1] for r in rows] == [78, 156, 312, 624]  # 3 branches of 26, 52, 104, 208 channels
