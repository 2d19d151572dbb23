"""The command line's own mistakes: a usage error or an unwritable path is one line naming the fix,
before any work is done."""
from __future__ import annotations

from resnets.cli import main


def test_a_usage_mistake_is_one_line_naming_the_help(capsys):
    """argparse printed the whole usage first: 39 lines for `train`."""
    code = main(["train", "--epochs", "1e9"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "resnets train: error: argument --epochs: invalid int value: '1e9' (see `resnets train --help`)\n"


def test_a_path_that_cannot_be_written_is_one_line_before_the_work(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    for json_path, needle in ((folder, "is a folder"), (tmp_path / "afile" / "r.json", "is not a folder")):
        # --steps 0 would fail in the benchmark itself: the path is refused before it
        assert main(["bench", "--device", "cpu", "--steps", "0", "--json", str(json_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "--json" in err, err
    assert main(["train", "--output", str(tmp_path / "afile"), "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "afile" in err and "Traceback" not in err, err
    assert (tmp_path / "afile").read_text() == "x"
