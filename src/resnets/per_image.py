"""What a model got wrong, image by image: predictions.csv (every image), top_losses.png (the mistakes it was
surest of) and the most-confused class pairs. `resnets eval` writes them for its folder; training writes them for
the val split and the best weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Container, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import ConfigError
from .evaluation import EvalResult
from .fileio import atomic_write, atomic_write_csv
from .messages import printable
from .models.pretrained_cfg import PretrainedCfg

PREDICTIONS_CSV, TOP_LOSSES_PNG = "predictions.csv", "top_losses.png"
PREDICTION_FIELDS = ("path", "true", "predicted", "probability", "loss")
DEFAULT_TOP_LOSSES = 16
CONFUSED_PAIRS = 10  # the pairs eval.json and the page list
CAM_ALPHA = 0.45  # heatmap opacity over a tile, as `resnets cam` blends it

Cam = Callable[[torch.Tensor], torch.Tensor]  # (B, C, H, W) model inputs -> (B, H, W) heatmaps in [0, 1]


@dataclass
class EvaluatedItems:
    """The images an evaluation saw, in the order of its result rows: a name for each (its file, or `#i` for an
    in-memory item) and the dataset to read its model input back from, for the few images a grid shows."""

    names: list[str]
    indices: list[int]  # into `dataset`
    dataset: Dataset
    pretrained_cfg: PretrainedCfg | None = None  # the mean and std that normalised float inputs, to show them

    def image(self, row: int) -> torch.Tensor:
        item = self.dataset[self.indices[row]]
        if not isinstance(item, tuple):  # an `Unreadable`: it was readable while evaluated, and no longer is
            raise OSError(f"{self.names[row]} is no longer readable")
        return item[0]


def evaluated_items(dataset: Dataset, pretrained_cfg: PretrainedCfg | None = None, skipped: Container[str] = (),
                    world_size: int = 1) -> EvaluatedItems:
    """The items of `dataset` in the order an evaluation returns them: shards dealt as the training's val loaders
    deal them (rank r takes r, r + W, ...; `merge_results` puts rank 0's first), files in `skipped` (unreadable,
    dropped from their batch) left out."""
    samples = getattr(dataset, "samples", None)
    names, indices = [], []
    for rank in range(world_size):
        for i in range(rank, len(dataset), world_size):  # type: ignore[arg-type]
            name = str(samples[i][0]) if samples is not None else f"#{i}"
            if name not in skipped:
                names.append(name)
                indices.append(i)
    return EvaluatedItems(names, indices, dataset, pretrained_cfg)


def check_top_losses(n: int) -> None:
    if n < 0:
        raise ConfigError(f"--top-losses must be >= 0, got {n}")


def write_predictions_csv(path: str | Path, names: Sequence[str], result: EvalResult,
                          class_names: Sequence[str]) -> Path:
    """One row per image: path, true class, predicted class, its probability, the image's loss."""
    rows = zip(names, result.targets.tolist(), result.predictions.tolist(), result.confidences.tolist(),
               result.losses.tolist())
    return atomic_write_csv(path, [PREDICTION_FIELDS, *([name, class_names[t], class_names[p], prob, loss]
                                                        for name, t, p, prob, loss in rows)])


def top_losses(result: EvalResult, n: int) -> list[int]:
    """The rows of the `n` wrong predictions with the highest loss (the model surest of a wrong class), worst
    first. Right predictions are left out even when unsure: they are not what went wrong."""
    wrong = (result.predictions != result.targets).nonzero().flatten()
    order = result.losses[wrong].argsort(descending=True, stable=True)
    return wrong[order][:n].tolist()


def confused_pairs(cm: np.ndarray, class_names: Sequence[str], k: int = CONFUSED_PAIRS) -> list[dict[str, Any]]:
    """The `k` largest off-diagonal cells of a confusion matrix (rows true): which class is mistaken for which,
    how often, and what share of the true class that is."""
    cm = np.asarray(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = []
    for t, p in zip(*np.unravel_index(flat, off.shape)):
        if off[t, p] == 0:
            break
        pairs.append({"true": str(class_names[t]), "predicted": str(class_names[p]), "count": int(off[t, p]),
                      "share_of_true": float(off[t, p] / max(cm[t].sum(), 1))})
    return pairs


def displayable(image: torch.Tensor, pretrained_cfg: PretrainedCfg | None) -> np.ndarray:
    """A model input, uint8 (C, H, W) as the training's val loader gives it or normalised float as eval's does, as
    an (H, W, 3) float image in [0, 1]. A float one with no `pretrained_cfg` to undo is stretched to [0, 1]."""
    if image.dtype == torch.uint8:
        rgb = image.float() / 255
    elif pretrained_cfg is None:
        rgb = image.float().cpu()
        rgb = (rgb - rgb.min()) / (rgb.max() - rgb.min()).clamp_min(1e-12)
    else:
        mean = torch.tensor(pretrained_cfg.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(pretrained_cfg.std, dtype=torch.float32)[:, None, None]
        rgb = (image.float().cpu() * std + mean).clamp(0, 1)
    if rgb.shape[0] == 1:
        rgb = rgb.expand(3, -1, -1)
    return rgb[:3].permute(1, 2, 0).numpy()


@dataclass
class Tile:
    rgb: np.ndarray  # (H, W, 3) in [0, 1]
    name: str
    true: str
    predicted: str
    probability: float
    loss: float
    heatmap: np.ndarray | None = None  # (H, W) in [0, 1]: Grad-CAM of the predicted class


def plot_top_losses(tiles: Sequence[Tile], path: str | Path, title: str, dpi: int = 100) -> Path:
    """A grid of the images, each titled with its file, true and predicted class, probability and loss."""
    from matplotlib import colormaps  # only when drawing: the commands that draw nothing need not import it
    from matplotlib.figure import Figure

    cols = min(len(tiles), 4)
    rows = -(-len(tiles) // cols)
    height = 2.9 * rows + 0.4
    fig = Figure(figsize=(2.6 * cols, height), dpi=dpi)
    # Fixed margins, room above each image for its 4-line title: a constrained layout measured every text's
    # extent and took about as long as the drawing itself
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.01, top=1 - 1.1 / height, wspace=0.08, hspace=0.45)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    for ax, tile in zip(axes, tiles):
        shown = tile.rgb
        if tile.heatmap is not None:
            shown = ((1 - CAM_ALPHA) * tile.rgb + CAM_ALPHA * colormaps["jet"](tile.heatmap)[..., :3]).clip(0, 1)
        ax.imshow(shown, interpolation="nearest" if max(shown.shape[:2]) < 64 else "bilinear")
        file = Path(tile.name)  # its class folder too: files of different classes may share a name
        name = printable(f"{file.parent.name}/{file.name}" if file.parent.name else file.name)
        name = name if len(name) <= 28 else name[:12] + "..." + name[-13:]
        ax.set_title(f"{name}\ntrue {printable(tile.true)[:24]}\npredicted {printable(tile.predicted)[:24]}\n"
                     f"p={tile.probability:.3f}  loss {tile.loss:.2f}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def write_per_image(out_dir: str | Path, result: EvalResult, items: EvaluatedItems, class_names: Sequence[str],
                    top: int = DEFAULT_TOP_LOSSES, cam: Cam | None = None, title: str = "") -> dict[str, str]:
    """predictions.csv and, when the model got any image wrong and `top` > 0, top_losses.png in `out_dir` (an
    earlier one, no longer true, goes). `cam`: overlay each tile with the Grad-CAM it returns. Needs a result
    evaluated with `keep_losses`. Returns the files written by key: "predictions", "top_losses"."""
    if result.losses is None or result.confidences is None:
        raise ValueError("write_per_image needs a result evaluated with keep_losses=True")
    if len(items.names) != result.num_samples:
        raise ValueError(f"{len(items.names)} item names for {result.num_samples} results")
    out_dir = Path(out_dir)
    files = {"predictions": str(write_predictions_csv(out_dir / PREDICTIONS_CSV, items.names, result, class_names))}
    rows = top_losses(result, top)
    png = out_dir / TOP_LOSSES_PNG
    if not rows:
        png.unlink(missing_ok=True)
        return files
    inputs = torch.stack([items.image(r) for r in rows])  # (n, C, H, W): a few images, read again
    heatmaps = cam(inputs).numpy() if cam is not None else [None] * len(rows)
    tiles = [Tile(displayable(image, items.pretrained_cfg), items.names[r], class_names[result.targets[r]],
                  class_names[result.predictions[r]], float(result.confidences[r]), float(result.losses[r]), heatmap)
             for r, image, heatmap in zip(rows, inputs, heatmaps)]
    wrong = int((result.predictions != result.targets).sum())
    heading = f"the {len(rows)} highest-loss mistakes of {wrong:,} ({result.num_samples:,} images)"
    files["top_losses"] = str(plot_top_losses(tiles, png, f"{title}: {heading}" if title else heading))
    return files
