"""--in-memory: the device-resident training set, its batched augmentation, its cache and exact resume."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

import resnets
from resnets.data.datasets import ImageFiles
from resnets.data.in_memory import DeviceAugment, cached_store, store_size
from resnets.errors import ConfigError
from resnets.models.pretrained_cfg import PretrainedCfg
from resnets.training.checkpoint import list_checkpoints
from resnets.training.config import TrainConfig

CIFAR_CFG = PretrainedCfg.from_dict({"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                                     "crop_pct": 1.0})
IMAGENET_CFG = PretrainedCfg.from_dict({"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406),
                                        "std": (0.229, 0.224, 0.225), "crop_pct": 0.875})


def test_small_images_are_reflect_padded_cropped_and_flipped_like_the_file_pipeline():
    batch = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    out = DeviceAugment(CIFAR_CFG, 32, hflip=0.5)(batch, torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    padded = F.pad(batch.float() / 255, (4, 4, 4, 4), mode="reflect")
    flips = 0
    for image, result in zip(padded, out * 0.25 + 0.5):
        windows = [image[:, t:t + 32, l:l + 32] for t in range(9) for l in range(9)]
        plain = any(torch.allclose(w, result, atol=1e-6) for w in windows)
        mirrored = any(torch.allclose(w.flip(-1), result, atol=1e-6) for w in windows)
        assert plain or mirrored  # every output is one window of the padded image, maybe mirrored
        flips += mirrored and not plain
    assert 0 < flips < 6


def test_resized_crops_cover_a_random_box_and_keep_constant_images_constant():
    augment = DeviceAugment(IMAGENET_CFG, 80, hflip=0.0)  # above 64 px: RandomResizedCrop
    flat = torch.full((4, 3, 91, 91), 128, dtype=torch.uint8)
    out = augment(flat, torch.Generator().manual_seed(1))
    assert out.shape == (4, 3, 80, 80)
    expected = (128 / 255 - torch.tensor(IMAGENET_CFG["mean"])) / torch.tensor(IMAGENET_CFG["std"])
    assert torch.allclose(out, expected.view(1, 3, 1, 1).expand_as(out), atol=1e-5)
    ramp = torch.arange(91, dtype=torch.uint8).repeat(2, 3, 91, 1) * 2  # brightness grows to the right
    crops = augment(ramp, torch.Generator().manual_seed(2))
    assert (crops[:, 0].diff(dim=-1) >= -1e-5).all()  # no flip asked: order kept
    assert not torch.equal(crops[0], crops[1])  # each sample its own box


def test_store_size_keeps_room_for_crops():
    assert store_size(CIFAR_CFG) == 32 and store_size(IMAGENET_CFG) == 256 and store_size(IMAGENET_CFG, 160) == 182


def _folder(root, n=4):
    rng = np.random.default_rng(0)
    samples = []
    for label, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = root / name / f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(path)
            samples.append((str(path), label))
    return samples


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path):
    samples = _folder(tmp_path / "data")
    dataset = ImageFiles(samples)
    store, path, built = cached_store(dataset, 16, CIFAR_CFG, tmp_path / "cache")
    assert built and store.images.shape == (8, 3, 16, 16) and store.labels.tolist() == [0] * 4 + [1] * 4
    again, same_path, built = cached_store(dataset, 16, CIFAR_CFG, tmp_path / "cache")
    assert not built and same_path == path and torch.equal(again.images, store.images)

    Image.new("RGB", (30, 30), "white").save(samples[0][0])  # the data changed: its cache must not be used
    changed, new_path, built = cached_store(dataset, 16, CIFAR_CFG, tmp_path / "cache")
    assert built and new_path != path and (changed.images[0] == 255).all()

    new_path.write_bytes(b"damaged")  # a damaged cache is rebuilt, not trusted
    rebuilt, _, built = cached_store(dataset, 16, CIFAR_CFG, tmp_path / "cache")
    assert built and torch.equal(rebuilt.images, changed.images)


def test_broken_files_are_left_out_of_the_store_and_reported(tmp_path):
    samples = _folder(tmp_path / "data", n=40)
    (tmp_path / "data" / "cat" / "broken.png").write_bytes(b"not a png")
    result = resnets.train(data_dir=str(tmp_path / "data"), model="cifar_resnet20", in_memory=True, epochs=1,
                           batch_size=16, cache_dir=str(tmp_path / "cache"), output=str(tmp_path / "runs"),
                           max_bad_fraction=0.05, progress=False)
    assert "broken.png" in (result.run_dir / "bad_files.csv").read_text()
    assert result.metrics["unreadable_files"] == 1 and len(samples) == 80


def test_in_memory_refuses_augmentations_it_does_not_run():
    with pytest.raises(ConfigError, match="in-memory"):
        TrainConfig(in_memory=True, auto_augment="rand").resolved()


def test_an_in_memory_run_resumed_mid_epoch_ends_with_the_same_weights(tmp_path):
    common = dict(in_memory=True, epochs=2, img_size=16, batch_size=32, checkpoint_every=10, keep_checkpoints=20,
                  progress=False)
    straight = resnets.train(output=str(tmp_path), name="straight", **common)
    copy = tmp_path / "resumed"
    shutil.copytree(straight.run_dir, copy)
    mid_epoch_2 = copy / "checkpoint-0002-000000050.pt"  # 6 of epoch 2's 44 steps done
    assert mid_epoch_2 in list_checkpoints(copy)
    resnets.train(resume=str(mid_epoch_2), progress=False)
    a, b = load_file(str(straight.run_dir / "last.safetensors")), load_file(str(copy / "last.safetensors"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_the_cache_file_is_streamed_to_disk_and_appears_whole_or_not_at_all(tmp_path):
    from safetensors.torch import load_file, save_file

    from resnets.fileio import atomic_write_to

    images = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    target = tmp_path / "store.safetensors"
    atomic_write_to(target, lambda tmp: save_file({"images": images}, tmp))
    assert torch.equal(load_file(str(target))["images"], images)

    def fail_halfway(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_to(target, fail_halfway)
    assert torch.equal(load_file(str(target))["images"], images)  # the old file, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["store.safetensors"]  # no temp file left


def _tamper(path: Path, change) -> None:
    """Rewrite a cache file with `change(images, labels, metadata)` applied, as an edit or a bad copy would."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata, images, labels = dict(f.metadata()), f.get_tensor("images"), f.get_tensor("labels")
    images, labels, metadata = change(images.clone(), labels.clone(), metadata)
    save_file({"images": images, "labels": labels}, str(path), metadata=metadata)


def _set(tensor: torch.Tensor, index, value) -> torch.Tensor:
    tensor[index] = value
    return tensor


TAMPERED = {
    "label out of range": lambda im, lb, meta: (im, _set(lb, 0, 7), meta),
    "labels swapped": lambda im, lb, meta: (im, 1 - lb, meta),
    "images swapped": lambda im, lb, meta: (im[[7, 1, 2, 3, 4, 5, 6, 0]], lb, meta),
    "an image missing": lambda im, lb, meta: (im[1:], lb[1:], meta),
    "another size": lambda im, lb, meta: (im[:, :, :8, :8].contiguous(), lb, meta),
    "float labels": lambda im, lb, meta: (im, lb.float(), meta),
    "built for other data": lambda im, lb, meta: (im, lb, {**meta, "key": "0" * 64}),
    "broken files not in the data": lambda im, lb, meta: (im, lb, {**meta, "broken": '{"/elsewhere.png": "x"}'}),
    "broken list not a mapping": lambda im, lb, meta: (im, lb, {**meta, "broken": "[1, 2]"}),
    "broken list nested too deep": lambda im, lb, meta: (im, lb, {**meta, "broken": "[" * 100_000}),
}


@pytest.mark.parametrize("change", TAMPERED, ids=list(TAMPERED))
def test_a_cache_that_does_not_hold_what_it_was_built_for_is_rebuilt(tmp_path, capsys, change):
    dataset = ImageFiles(_folder(tmp_path / "data"))
    store, path, built = cached_store(dataset, 16, CIFAR_CFG, tmp_path / "cache")
    _tamper(path, TAMPERED[change])
    capsys.readouterr()
    again, same_path, built = cached_store(dataset, 16, CIFAR_CFG, tmp_path / "cache")
    assert built and same_path == path
    assert torch.equal(again.images, store.images) and again.labels.tolist() == [0] * 4 + [1] * 4
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "does not hold what it was built for" in warning[0] and "rebuilding" in warning[0]
    reused, _, built = cached_store(dataset, 16, CIFAR_CFG, tmp_path / "cache")  # the rebuilt one holds
    assert not built and torch.equal(reused.images, store.images)


def test_an_in_memory_run_on_a_cache_with_a_label_out_of_range_rebuilds_it_and_trains(tmp_path, capsys):
    _folder(tmp_path / "data", n=10)
    common = dict(data_dir=str(tmp_path / "data"), in_memory=True, epochs=1, img_size=16, batch_size=32,
                  cache_dir=str(tmp_path / "cache"), output=str(tmp_path / "runs"), progress=False)
    resnets.train(**common)
    (path,) = (tmp_path / "cache").glob("store-*.safetensors")
    _tamper(path, TAMPERED["label out of range"])
    capsys.readouterr()
    result = resnets.train(**common)  # was: IndexError: Target 7 is out of bounds
    assert "rebuilding it" in capsys.readouterr().err and result.metrics["best_epoch"] == 1
