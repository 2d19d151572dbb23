"""`resnets models`, `summary`, `design`: the analysis commands, the tables they print and their error handling.

The figures themselves (parameter counts, GMACs, ResNeXt's Table 2) are checked against the papers in
tests/models/test_paper_figures.py.
"""
import re

import pytest

from resnets.analysis import summarize
from resnets.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_table_lists_params_and_gmacs(capsys):
    code, out, _ = run(capsys, "models", "resnext50*")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("resnext50_32x4d"))
    assert "25,028,904" in row and "4.23" in row
    assert "resnet50 " not in out  # the wildcard filtered


def test_models_unknown_pattern_is_one_line_exit_2(capsys):
    code, out, err = run(capsys, "models", "nothing*")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


def test_summary_rows_add_up_to_totals():
    s = summarize("resnet18")
    assert sum(r.params for r in s.rows) == s.params == 11_689_512
    assert sum(r.macs for r in s.rows) == s.macs
    conv1 = next(r for r in s.rows if r.name == "conv1")
    assert conv1.output_shape == (1, 64, 112, 112) and conv1.macs == 64 * 3 * 49 * 112 * 112
    assert s.rows[-1].name == "fc" and s.rows[-1].output_shape == (1, 1000)
    assert s.activation_bytes > 0


def test_summary_depth_groups_blocks_and_img_size_changes_macs():
    grouped = summarize("resnet50", depth=2)
    assert {r.name for r in grouped.rows} >= {"conv1", "layer1.0", "layer4.2", "fc"}
    assert all(r.name.count(".") <= 1 for r in grouped.rows)
    assert sum(r.params for r in grouped.rows) == grouped.params
    small = summarize("resnet50", img_size=112, depth=1)
    assert small.macs < grouped.macs / 3.5  # a quarter of the pixels (plus the fixed-size head)


def test_summary_cli_prints_thousands_and_totals(capsys):
    code, out, _ = run(capsys, "summary", "cifar_resnet20")
    assert code == 0
    assert "params: 269,722" in out
    assert re.search(r"MACs: [\d,]+ \(0\.04 G\)", out)
    assert "activation memory" in out


@pytest.mark.parametrize("argv,needle", [
    (["summary", "resnet5O"], "resnet50"),
    (["summary", "resnet50", "--img-size", "8"], "too small"),
    (["design", "resnext77", "--cardinality", "2"], "resnext50"),
])
def test_analysis_errors_are_one_line_exit_2(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert "Traceback" not in err


def test_design_cli_table(capsys):
    code, out, _ = run(capsys, "design", "resnext50", "--cardinality", "1", "32")
    assert code == 0
    assert re.search(r"^\s+32\s+4\s+128\s+32x4d\s+25,028,904\s+4\.23$", out, re.M)
