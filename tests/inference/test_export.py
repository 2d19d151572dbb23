"""`resnets export` to ONNX and to a torch.export program: both run at another batch size and give the eager
model's outputs; opsets the exporter cannot write and failed checks leave nothing behind."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from resnets.hub import load_model
from resnets.errors import ExportError
from resnets.export.pipeline import export_model, read_export_metadata

CLASSES = ["apple", "banana", "cherry"]  # listed in an order that is also their sorted order


def test_export_onnx_runs_at_another_batch(run_cli, work: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    code, out, err = run_cli(capsys, "export", "--weights", work["run"], "--format", "onnx", "--output", path,
                             "--opset", "18")
    assert code == 0, err
    assert "max |exported - eager|" in out
    # weights inside, no .data side file; the report beside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 32, 32]  # symbolic batch
    model = load_model(work["run"]).eval()
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        got = session.run(None, {inp.name: x.numpy()})[0]
        with torch.inference_mode():
            want = model(x).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    onnx = pytest.importorskip("onnx")
    assert [o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")] == [18]
    meta = read_export_metadata(path)
    assert meta["class_names"] == CLASSES
    assert meta["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert json.loads(session.get_modelmeta().custom_metadata_map["resnets"]) == meta


def test_export_pt2_runs_at_another_batch(run_cli, work: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    code, _, err = run_cli(capsys, "export", "--weights", work["run"], "--format", "pt2", "--output", path,
                           "--img-size", "40")
    assert code == 0, err
    program = torch.export.load(path)
    model = load_model(work["run"]).eval()
    x = torch.randn(7, 3, 40, 40)
    with torch.inference_mode():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-4, atol=1e-5)
    assert read_export_metadata(path)["pretrained_cfg"]["input_size"] == [3, 40, 40]


@pytest.mark.parametrize("opset", ["17", "9999"])
def test_export_rejects_an_opset_the_exporter_cannot_write(run_cli, assert_one_line_error, work: dict,
                                                           capsys: pytest.CaptureFixture, tmp_path: Path,
                                                           opset: str) -> None:
    # Below 18 torch's exporter logs a conversion traceback and quietly writes opset 18; past onnx's newest,
    # its converter dumps a C++ assertion first.
    code, _, err = run_cli(capsys, "export", "--weights", work["run"], "--format", "onnx", "--output",
                           tmp_path / "m.onnx", "--opset", opset)
    assert_one_line_error(code, err, "export")
    assert re.search(r"writes opsets 18 to \d+$", err.strip())
    assert list(tmp_path.iterdir()) == []


def test_failed_export_check_leaves_no_file(work: dict, tmp_path: Path) -> None:
    model = load_model(work["run"]).eval()
    with pytest.raises(ExportError, match="differs"):
        export_model(model, tmp_path / "m.pt2", "pt2", rtol=-1.0)  # no difference is small enough
    assert list(tmp_path.iterdir()) == []
