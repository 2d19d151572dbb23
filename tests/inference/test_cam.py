"""Grad-CAM: equal to CAM on the last stage, the PNGs `resnets cam` writes, and its mistakes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnets.errors import ConfigError
from resnets.hub import load_model
from resnets.inference.cam import grad_cam, save_cam_figure

PER_CLASS = 5
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_grad_cam_equals_cam_on_last_stage(preprocessed, work: dict) -> None:
    """With global average pooling and one linear layer after the last stage, Grad-CAM is exactly CAM
    (Zhou et al. 2016): alpha_k = W[c, k] / (h * w). Selvaraju et al. 2017 prove it in their Sec. 3.1."""
    model = load_model(work["run"]).eval()
    x = preprocessed(model, work["files"][::4])
    result = grad_cam(model, x)
    with torch.inference_mode():
        feats = model.forward_features(x)  # (B, K, h, w)
        pred = model(x).argmax(1)
        cam = F.relu(torch.einsum("bk,bkhw->bhw", model.fc.weight[pred], feats))[:, None]
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam / cam.flatten(1).max(1).values[:, None, None]
    torch.testing.assert_close(result.heatmaps, cam, rtol=1e-4, atol=1e-5)
    assert result.class_indices == pred.tolist() == result.predicted
    h = result.heatmaps
    assert h.shape == (len(x), 32, 32) and h.min() >= 0
    torch.testing.assert_close(h.flatten(1).max(1).values, torch.ones(len(x)))  # normalised per image
    assert (h.flatten(1).std(1) > 0.01).all()  # not constant

    other = grad_cam(model, x, layer="layer2.0", class_index=0)
    assert other.class_indices == [0] * len(x)
    assert not torch.allclose(other.heatmaps, h)


def test_cam_cli_writes_pngs(run_cli, work: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    images = [work["files"][0], work["files"][PER_CLASS]]
    code, out, err = run_cli(capsys, "cam", "--weights", work["run"], "--output", tmp_path, *images)
    assert code == 0, err
    written = sorted(tmp_path.iterdir())
    assert [p.name for p in written] == sorted(f"{p.stem}_cam.png" for p in images)
    for png in written:
        assert png.read_bytes()[:8] == PNG_MAGIC
        with Image.open(png) as img:
            assert img.size == (800, 440)
            assert np.asarray(img.convert("RGB")).std() > 10


def test_cam_figure_of_a_white_image_draws_without_warnings(tmp_path: Path, caplog) -> None:
    # White input under a hot heatmap blends to a hair above 1.0 in float32; imshow logged a "Clipping input
    # data" warning for each such image.
    rgb = np.ones((32, 32, 3), dtype=np.float32)
    heatmap = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    save_cam_figure(rgb, heatmap, "white", tmp_path / "w.png")
    assert caplog.records == []
    assert (tmp_path / "w.png").read_bytes()[:8] == PNG_MAGIC


def test_cam_unknown_layer_lists_stages(run_cli, assert_one_line_error, work: dict, capsys: pytest.CaptureFixture,
                                        tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "cam", "--weights", work["run"], "--layer", "layer4", "--output", tmp_path,
                           work["files"][0])
    assert_one_line_error(code, err, "cam")
    assert "layer1, layer2, layer3" in err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="not a \\(B, C, H, W\\)"):
        grad_cam(load_model(work["run"]), torch.randn(1, 3, 32, 32), layer="fc")
