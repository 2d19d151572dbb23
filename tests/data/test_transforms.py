"""The train and eval transforms: batching through a DataLoader, thin images, normalising on the device."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from resnets.data import eval_transform, load_splits, train_transform
from resnets.errors import ConfigError
from resnets.models.pretrained_cfg import PretrainedCfg

DATA_CFG = PretrainedCfg(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=1.0)


def test_real_transforms_batch_through_a_dataloader(make_folder, tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"apple": 6, "banana": 6})
    splits = load_splits("folder", root, train_transform=train_transform(DATA_CFG),
                         eval_transform=eval_transform(DATA_CFG))
    images, labels = next(iter(DataLoader(splits.train, batch_size=4)))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    # A DataLoader worker started by "spawn" (macOS, Windows) receives the dataset pickled.
    val_copy = pickle.loads(pickle.dumps(splits.val))
    torch.testing.assert_close(val_copy[0][0], splits.val[0][0])


def test_thin_images_are_cropped_before_resizing_with_the_same_result():
    import numpy as np
    from PIL import Image
    from torchvision.transforms import v2

    from resnets.data.transforms import _to_normalized, eval_transform

    cfg = PretrainedCfg.from_dict({"input_size": (3, 224, 224), "mean": (0.5,) * 3, "std": (0.25,) * 3,
                                   "crop_pct": 0.875})
    uncapped = v2.Compose([v2.ToImage(), v2.Resize(256, antialias=True), v2.CenterCrop(224), *_to_normalized(cfg)])
    rng = np.random.default_rng(0)
    for shape in [(300, 400), (100, 450), (450, 90), (7, 900)]:
        image = Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
        assert torch.equal(eval_transform(cfg)(image), uncapped(image))
    # 1 x 40,000 would resize to 256 x 10,240,000 (7.9 GB as float) without the crop first.
    strip = Image.fromarray(rng.integers(0, 255, (1, 40_000, 3), dtype=np.uint8))
    assert eval_transform(cfg)(strip).shape == (3, 224, 224)


# ---------------------------------------------------------------- normalising on the device

@pytest.mark.parametrize("size", [32, 96])  # the pad-crop (small) and RandomResizedCrop branches
def test_uint8_transforms_normalised_on_the_device_equal_the_float_transforms(size: int) -> None:
    from resnets.data.transforms import DeviceNormalize

    cfg = PretrainedCfg.from_dict({"input_size": (3, size, size), "mean": (0.485, 0.456, 0.406),
                                   "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "interpolation": "bilinear"})
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 120, 3), dtype=np.uint8))
    finish = DeviceNormalize(cfg, channels_last=True)
    for make in (lambda n: train_transform(cfg, hflip=0.5, normalize=n), lambda n: eval_transform(cfg, normalize=n)):
        torch.manual_seed(3)
        in_workers = make(True)(image)
        torch.manual_seed(3)
        raw = make(False)(image)
        assert raw.dtype == torch.uint8
        on_device = finish(torch.stack([raw]))
        assert on_device.dtype == torch.float32 and on_device.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(on_device[0], in_workers, rtol=0, atol=1e-5)
        assert torch.equal(finish(in_workers[None])[0], in_workers)  # float batches pass as they are


def test_random_erasing_needs_normalising_in_the_workers() -> None:
    cfg = PretrainedCfg.from_dict({"input_size": (3, 96, 96), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    with pytest.raises(ConfigError, match="random erasing"):
        train_transform(cfg, random_erasing=0.25, normalize=False)
