"""User mistakes in eval, predict, export and cam: missing weights, an unknown model, other classes, tiny images
are one line, exit code 2, and write nothing."""
from __future__ import annotations

from pathlib import Path

import pytest

BAD_INPUT = [(command, case) for case in ("missing weights", "unknown model")
             for command in ("eval", "predict", "export", "cam")] + [("eval", "class mismatch"),
                                                                     ("eval", "tiny images")]


@pytest.mark.parametrize(("command", "case"), BAD_INPUT)
def test_bad_input_is_one_line_and_writes_nothing(run_cli, assert_one_line_error, work: dict,
                                                  capsys: pytest.CaptureFixture, tmp_path: Path, command: str,
                                                  case: str) -> None:
    checkpoint = tmp_path / "nope" if case == "missing weights" else work["run"]
    model = ["--model", "resnet9000"] if case == "unknown model" else []
    out = tmp_path / "out"
    data = work["other"] if case == "class mismatch" else work["data"]
    argv = {
        "eval": ["--data-dir", data, "--output", out, "-j", "0"],
        "predict": ["--output", out / "p.csv", work["files"][0]],
        "export": ["--format", "onnx", "--output", out / "m.onnx"],
        "cam": ["--output", out, work["files"][0]],
    }[command]
    if case == "tiny images":  # training refuses them; eval did evaluate at 2 px
        argv += ["--img-size", "2"]
    code, stdout, err = run_cli(capsys, command, "--weights", checkpoint, *model, *argv)
    assert_one_line_error(code, err, command)
    assert {"missing weights": "no such weights file", "unknown model": "unknown model 'resnet9000'",
            "class mismatch": "durian", "tiny images": "too small"}[case] in err
    assert not out.exists()
