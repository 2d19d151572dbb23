"""report.html: one page about a run folder or an eval folder, built from the files in it.

The page is a single file that opens anywhere, offline and moved away from the folder: plain HTML and CSS, its
PNGs inlined as data: URIs, no script. Every string that came from the user's data or options (class names,
paths, config values) goes through `html.escape`. A file that is missing or cannot be read becomes a sentence
on the page saying so, never an exception: the page of a run stopped in its first epoch says what it lacks.
"""
from __future__ import annotations

import base64
import csv
import html
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import yaml

from .data.bad_files import BAD_FILES_CSV
from .errors import ConfigError
from .fileio import atomic_write_bytes, csv_value, read_yaml_mapping
from .messages import one_line
from .per_image import DEFAULT_TOP_LOSSES, PREDICTIONS_CSV, TOP_LOSSES_PNG, confused_pairs
from .reports import CONFUSION_CSV, CONFUSION_PNG, REPORT_CSV

PAGE = "report.html"
RUN_MARKERS = ("config.yaml", "metrics.json")  # what makes a folder a run folder
EVAL_MARKER = "eval.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TABLE_ROWS = 500  # a list of 50,000 unreadable files would make a page no browser wants to open
# metrics.json keys that are shown in their own sections, not as one cell of the figures' table
SHOWN_ELSEWHERE = ("per_class", "confused_pairs", "class_names")
READ_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, yaml.YAMLError, csv.Error)

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
.sub { color: #666; margin-top: 0; } .headline { font-size: 1.15em; }
table { border-collapse: collapse; margin: 0.6em 0; } th, td { padding: 2px 10px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.missing { color: #a33; } .note { color: #666; }
"""


def folder_kind(folder: str | Path) -> str:
    """"run" (config.yaml or metrics.json), "eval" (eval.json), or a one-line ConfigError for any other folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    if any((folder / name).is_file() for name in RUN_MARKERS):
        return "run"
    if (folder / EVAL_MARKER).is_file():
        return "eval"
    raise ConfigError(f"{folder} is neither a run folder (it has no {' or '.join(RUN_MARKERS)}) nor an eval folder "
                      f"(no {EVAL_MARKER})")


def write_report_page(folder: str | Path, kind: str | None = None, output: str | Path | None = None) -> Path:
    """Build the page of `folder` ("run" or "eval"; found out when None) into `output` (default:
    `folder`/report.html). Returns the page's path."""
    folder = Path(folder)
    kind = kind or folder_kind(folder)
    page = (build_run_page if kind == "run" else build_eval_page)(folder)
    return atomic_write_bytes(Path(output) if output is not None else folder / PAGE, page.encode("utf-8"))


# -- the two pages --------------------------------------------------------------------------------------------

def build_run_page(folder: Path) -> str:
    config = read_yaml_mapping(folder / "config.yaml") or {}
    metrics = _guarded(lambda: _read_json(folder / "metrics.json"), None)
    missing = []
    if not (folder / "metrics.json").is_file():
        missing.append("metrics.json: the run has not finished, or stopped before its final report (no final "
                       f"figures, per-class report, confusion matrix or top losses); `resnets train --resume "
                       f"{folder}` finishes it")
    if not (folder / "summary.csv").is_file():
        missing.append("summary.csv: no epoch has finished, so there are no curves")
    what = " on ".join(str(config[k]) for k in ("model", "dataset") if config.get(k))
    headline = _headline(metrics, "best_top1", "best_top5", "best_val_loss", "best_epoch") if isinstance(
        metrics, dict) else ""
    body = [f"<h1>Run {_e(folder.resolve().name)}</h1>", f"<p class='sub'>{_e(what)}</p>" if what else "",
            headline, _missing_list(missing),
            _section("Final figures (metrics.json)", lambda: _figures(folder / "metrics.json")),
            _section("Training curves", lambda: _curves(folder)),
            *_prediction_sections(folder),
            _section("Configuration (config.yaml)", lambda: _configuration(folder / "config.yaml"))]
    return _page(f"resnets run {folder.resolve().name}", body)


def build_eval_page(folder: Path) -> str:
    summary = _guarded(lambda: _read_json(folder / EVAL_MARKER), None)
    summary = summary if isinstance(summary, dict) else {}
    weights, data = str(summary.get("weights") or "the model"), str(summary.get("data_dir") or "?")
    body = [f"<h1>Evaluation of {_e(weights)}</h1>", f"<p class='sub'>on {_e(data)}</p>",
            _headline(summary, "top1", "top5", "loss", None),
            _section(f"Figures ({EVAL_MARKER})", lambda: _figures(folder / EVAL_MARKER)),
            *_prediction_sections(folder)]
    run_config = Path(weights).parent / "config.yaml" if summary.get("weights") else None
    if run_config is not None and run_config.is_file():
        body.append(_section("Configuration of the run that trained the weights", lambda: _configuration(run_config)))
    return _page(f"resnets eval {weights}", body)


def _prediction_sections(folder: Path) -> list[str]:
    """What a run's final report and an eval share: confusion, per-class figures, top losses, unreadable files."""
    return [_section("Confusion matrix", lambda: _image(folder / CONFUSION_PNG, "confusion matrix")),
            _section("Most-confused pairs", lambda: _confused(folder / CONFUSION_CSV)),
            _section("Per-class precision, recall and F1", lambda: _per_class(folder / REPORT_CSV)),
            _section("Top losses: the mistakes the model was surest of", lambda: _top_losses(folder)),
            _section("Unreadable files (skipped)", lambda: _bad_files(folder / BAD_FILES_CSV))]


# -- sections -------------------------------------------------------------------------------------------------

def _headline(figures: dict | None, top1: str, top5: str, loss: str, epoch: str | None) -> str:
    if not isinstance(figures, dict) or not isinstance(figures.get(top1), (int, float)):
        return ""
    parts = [f"top-1 <b>{figures[top1]:.2f}%</b>"]
    if isinstance(figures.get(top5), (int, float)):
        parts.append(f"top-5 {figures[top5]:.2f}%")
    if isinstance(figures.get(loss), (int, float)):
        parts.append(f"loss {figures[loss]:.4f}")
    if epoch and isinstance(figures.get(epoch), int):
        parts.append(f"at epoch {figures[epoch]}")
    return f"<p class='headline'>{', '.join(parts)}</p>"


def _figures(path: Path) -> str:
    """Every scalar of a metrics.json or eval.json as written there, so the page holds the file's own numbers."""
    figures = _read_json(path)
    if not isinstance(figures, dict):
        raise ValueError("not a JSON object")
    rows = []
    for key, value in figures.items():
        if key in SHOWN_ELSEWHERE or key == "files":
            continue
        rows.append([key, value if isinstance(value, str) else json.dumps(value)])
    if isinstance(figures.get("class_names"), list):
        names = [str(n) for n in figures["class_names"]]
        rows.append(["class_names", f"{len(names)}: " + ", ".join(names[:50]) + (", ..." if len(names) > 50 else "")])
    return _table(["figure", "value"], rows)


def _curves(folder: Path) -> str:
    parts = [_image(folder / "curves.png", "loss and top-1 against epoch")]
    if (folder / "summary.csv").is_file():
        header, rows = _read_table(folder / "summary.csv")
        parts.append(_table(header, rows, numeric=True, limit=None))  # every epoch
    return "\n".join(parts)


def _confused(path: Path) -> str:
    header, rows = _read_table(path)
    names = header[1:]
    cm = np.array([[int(v) for v in row[1:]] for row in rows], dtype=np.int64).reshape(len(rows), len(names))
    pairs = confused_pairs(cm, names)
    if not pairs:
        return "<p class='note'>No image was mistaken for another class.</p>"
    return _table(["true class", "predicted as", "images", "share of the true class"],
                  [[p["true"], p["predicted"], p["count"], f"{100 * p['share_of_true']:.1f}%"] for p in pairs],
                  numeric=True)


def _per_class(path: Path) -> str:
    header, rows = _read_table(path)
    shown = [[row[0], *(_rounded(v) for v in row[1:])] for row in rows]
    return _table(header, shown, numeric=True, limit=None)  # every class, and the averages after them


def _top_losses(folder: Path) -> str:
    parts = []
    if (folder / TOP_LOSSES_PNG).is_file():
        parts.append(_image(folder / TOP_LOSSES_PNG, "the highest-loss mistakes"))
    header, rows = _read_table(folder / PREDICTIONS_CSV)
    if header[:5] != ["path", "true", "predicted", "probability", "loss"]:
        raise ValueError(f"unexpected columns {', '.join(header)}")
    wrong = sorted((r for r in rows if r[1] != r[2]), key=lambda r: -float(r[4]))
    if not wrong:
        return f"<p class='note'>Every one of the {len(rows):,} images was classified right.</p>"
    parts.append(f"<p>{len(wrong):,} of {len(rows):,} images wrong; the worst {min(len(wrong), DEFAULT_TOP_LOSSES)} "
                 f"(every image is in {PREDICTIONS_CSV}):</p>")
    parts.append(_table(header, [[r[0], r[1], r[2], _rounded(r[3]), _rounded(r[4])]
                                 for r in wrong[:DEFAULT_TOP_LOSSES]], numeric=True))
    return "\n".join(parts)


def _bad_files(path: Path) -> str:
    if not path.is_file():
        return "<p class='note'>None: every image could be read.</p>"
    header, rows = _read_table(path)
    return f"<p>{len(rows):,} file(s), listed in {BAD_FILES_CSV}</p>" + _table(header, rows)


def _configuration(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    parts = []
    recipe = {k: v for k, v in config.items() if str(k).startswith("recipe")} if isinstance(config, dict) else {}
    if recipe:
        parts.append("<h3>Chosen recipe</h3><pre>" + _e(yaml.safe_dump(recipe, sort_keys=False)) + "</pre>")
    parts.append(f"<pre>{_e(text)}</pre>")
    return "\n".join(parts)


# -- building blocks ------------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: Iterable[str]) -> str:
    written = f"<p class='note'>Written {datetime.now():%Y-%m-%d %H:%M} by resnets; `resnets report` rebuilds it.</p>"
    return ("<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
            f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(part for part in body if part) + f"\n{written}\n</body>\n</html>\n")


def _section(title: str, build: Callable[[], str]) -> str:
    """A heading and what `build` makes of the folder's files; a missing or unreadable file is said in its place."""
    try:
        content = build()
    except FileNotFoundError as e:
        content = f"<p class='missing'>Not available: {_e(Path(e.filename).name if e.filename else e)} is missing.</p>"
    except READ_ERRORS as e:
        content = f"<p class='missing'>Could not be read: {_e(one_line(e))}</p>"
    return f"<section>\n<h2>{_e(title)}</h2>\n{content}\n</section>"


def _guarded(read: Callable[[], Any], default: Any) -> Any:
    try:
        return read()
    except READ_ERRORS:
        return default


def _missing_list(missing: Sequence[str]) -> str:
    if not missing:
        return ""
    return "<p class='missing'>Missing:</p><ul>" + "".join(f"<li>{_e(m)}</li>" for m in missing) + "</ul>"


def _image(path: Path, alt: str) -> str:
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path.name} is not a PNG file")
    return f"<img src='data:image/png;base64,{base64.b64encode(data).decode('ascii')}' alt='{_e(alt)}'>"


def _table(header: Sequence[Any], rows: Sequence[Sequence[Any]], numeric: bool = False,
           limit: int | None = MAX_TABLE_ROWS) -> str:
    """An HTML table; with `numeric`, cells that read as numbers are right-aligned. Past `limit` rows, a line says
    how many more there are."""
    limit = len(rows) if limit is None else limit
    def cell(value: Any) -> str:
        number = numeric and _is_number(value)
        return f"<td class='num'>{_e(value)}</td>" if number else f"<td>{_e(value)}</td>"

    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>\n" for row in rows[:limit])
    more = f"<p class='note'>... and {len(rows) - limit:,} more rows</p>" if len(rows) > limit else ""
    return f"<table>\n<tr>{head}</tr>\n{body}</table>{more}"


def _is_number(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return True
    try:
        float(str(value).rstrip("%"))
    except ValueError:
        return False
    return True


def _rounded(cell: str) -> str:
    """A float cell to 4 decimals; counts and text as they are."""
    if cell.lstrip("-").isdigit():
        return cell
    try:
        return f"{float(cell):.4f}"
    except ValueError:
        return cell


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a CSV resnets wrote, each cell as it was before `csv_cell` guarded it."""
    with open(path, newline="", encoding="utf-8") as f:
        table = [[csv_value(cell) for cell in row] for row in csv.reader(f)]
    if not table:
        raise ValueError(f"{path.name} is empty")
    return table[0], table[1:]
