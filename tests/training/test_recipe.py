"""--recipe auto: the options chosen from the data, the model and the run; every option given wins."""
from __future__ import annotations

import argparse
import os
import threading

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from resnets.data.datasets import ImageFiles, TensorImages
from resnets.training.config import TrainConfig, add_arguments, config_from_args, make_config
from resnets.training.recipe import DataFacts, choose_recipe, typical_side

SMALL = DataFacts(train_images=1_442, num_classes=10, image_side=28, imbalance=1.0)


def choose(facts: DataFacts = SMALL, input_side: int = 224, pretrained: bool = False, world_size: int = 1,
           **given):
    cfg = make_config(given).resolved() if given else TrainConfig().resolved()
    return choose_recipe(cfg, set(given), facts, input_side, pretrained, world_size)


def test_imagenet_recipe_changes_nothing():
    assert choose(recipe="imagenet").choices == {}


def test_every_option_given_wins():
    free = choose().choices
    assert free  # the recipe does choose something for a small folder
    given = {"batch_size": 48, "lr": 0.3, "opt": "sgd", "warmup_epochs": 2.0, "label_smoothing": 0.0,
             "img_size": 224, "weight_decay": 1e-4}
    chosen = choose(**given).choices
    assert not set(chosen) & set(given)


def test_small_images_train_near_their_own_size_not_blown_up_to_the_models():
    assert choose(input_side=224).choices["img_size"] == 64  # 28 px: an ImageNet-style net keeps 2x2 at the end
    assert choose(DataFacts(500, 5, 100, 1.0), input_side=224).choices["img_size"] == 128
    assert choose(DataFacts(500, 5, 100, 1.0), input_side=224, pretrained=True).choices["img_size"] == 128
    assert choose(DataFacts(500, 5, 40, 1.0), input_side=224, pretrained=True).choices["img_size"] == 112
    assert "img_size" not in choose(DataFacts(500, 5, 300, 1.0), input_side=224).choices  # larger: the model's
    assert "img_size" not in choose(DataFacts(500, 5, None, 1.0), input_side=224).choices  # unknown
    assert "img_size" not in choose(DataFacts(500, 5, 32, 1.0), input_side=32).choices  # a CIFAR net on CIFAR


def test_small_data_gets_smaller_batches_and_the_lr_follows_the_global_batch():
    tiny = choose(DataFacts(300, 10, 32, 1.0), input_side=32).choices
    large = choose(DataFacts(50_000, 10, 32, 1.0), input_side=32).choices
    assert tiny["batch_size"] == 16 and large.get("batch_size", 64) == 64
    lr = lambda chosen: chosen.get("lr", TrainConfig().lr)  # noqa: E731  (absent: the default was the choice)
    assert lr(tiny) == pytest.approx(0.4 * 16 / 256) and lr(large) == pytest.approx(0.4 * 64 / 256)
    two = choose(DataFacts(50_000, 10, 32, 1.0), input_side=32, world_size=2).choices
    assert lr(two) == pytest.approx(2 * lr(large))
    assert lr(choose(DataFacts(50_000, 10, 32, 1.0), input_side=32, batch_size=256).choices) == pytest.approx(0.4)


def test_adamw_given_gets_its_own_lr_and_decay_and_fine_tuning_the_same():
    scratch = choose(opt="adamw", batch_size=256).choices
    assert scratch["lr"] == pytest.approx(1e-3) and scratch["weight_decay"] == 0.05
    tuned = choose(opt="adamw", batch_size=256, pretrained=True).choices
    assert tuned["lr"] == pytest.approx(1e-3)  # measured: a tenth cost 25-30 points (recipe.py)


def test_scale_lr_given_gets_the_lr_of_its_base_batch():
    chosen = choose(scale_lr="linear", lr_base_batch=512, batch_size=64).choices
    assert chosen["lr"] == pytest.approx(0.8)  # the trainer then scales it to the global batch


def test_warmup_is_about_a_hundred_steps_and_at_most_a_tenth_of_the_run():
    assert choose(epochs=5).choices["warmup_epochs"] == pytest.approx(0.5)  # a tenth of 5 epochs
    big = choose(DataFacts(64_000, 10, 32, 1.0), input_side=32, epochs=40).choices
    assert big["warmup_epochs"] == pytest.approx(0.1)  # 1,000 steps an epoch


def test_augmentation_grows_with_the_epochs_and_the_data():
    facts = DataFacts(20_000, 10, 300, 1.0)
    short, mid, long = (choose(facts, epochs=e).choices for e in (5, 15, 60))
    assert (short["crop_scale"], mid["crop_scale"], long.get("crop_scale", 0.08)) == (0.35, 0.25, 0.08)
    assert "auto_augment" not in short and long["auto_augment"] == "trivial" and long["random_erasing"] > 0
    assert "auto_augment" not in choose(facts, epochs=60, in_memory=True).choices  # crop and flip only there
    assert "crop_scale" not in choose(DataFacts(500, 10, 32, 1.0), input_side=32).choices  # padded crops


def test_label_smoothing_ema_and_fine_tuning_follow_classes_steps_and_weights():
    assert choose(DataFacts(500, 2, 32, 1.0), input_side=32).choices.get("label_smoothing", 0.0) == 0.0
    assert choose().choices["label_smoothing"] == pytest.approx(0.1)
    assert "ema_decay" not in choose().choices  # 225 steps: the average would still hold the start
    long = choose(DataFacts(64_000, 10, 32, 1.0), input_side=32, epochs=40).choices
    assert 0.99 <= long["ema_decay"] <= 0.9999
    assert "head_epochs" not in choose().choices and "layer_decay" not in choose().choices
    tuned = choose(pretrained=True).choices
    assert tuned["head_epochs"] == 1 and "layer_decay" not in tuned  # 8 epochs: ~15% of them
    assert choose(pretrained=True, epochs=20).choices["head_epochs"] == 3
    assert "head_epochs" not in choose(pretrained=True, epochs=2).choices
    assert "head_epochs" not in choose(pretrained=True, freeze_backbone=True).choices


def test_the_choices_make_a_valid_config():
    for facts in (SMALL, DataFacts(10, 2, 8, 1.0), DataFacts(10**6, 1000, 500, 20.0)):
        for pretrained in (False, True):
            for epochs in (1, 3, 10, 100):
                cfg = TrainConfig(epochs=epochs).resolved()
                choose_recipe(cfg, set(), facts, 224, pretrained, 1).apply(cfg).validate()


def test_typical_side_reads_headers_and_skips_what_is_no_regular_file(tmp_path):
    files = []
    for i, (w, h) in enumerate([(40, 30), (50, 60), (20, 90)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)
        files.append((str(path), 0))
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it would block until a writer came
    files.append((str(fifo), 0))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    files.append((str(tmp_path / "broken.png"), 0))
    found: list = []
    worker = threading.Thread(target=lambda: found.append(typical_side(ImageFiles(files))), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert found == [30]  # short sides 30, 50, 20
    assert typical_side(TensorImages(torch.zeros(2, 3, 24, 32, dtype=torch.uint8), [0, 1])) == 24
    assert typical_side(ImageFiles([])) is None


def write_folder(root, side: int, per_class: int = 12, classes: int = 3):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 4)):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (side, side, 3)) + 60 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")


def test_train_prints_records_and_reuses_the_recipe(tmp_path, capsys):
    from resnets.cli import main

    write_folder(tmp_path / "data", side=20)
    common = ["train", "--data-dir", str(tmp_path / "data"), "--model", "cifar_resnet20", "--epochs", "2",
              "--output", str(tmp_path / "runs"), "--no-progress", "-j", "0"]
    assert main([*common, "--name", "auto"]) == 0
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("recipe auto"))
    assert "img-size 32" in line and "batch-size 16" in line
    recorded = yaml.safe_load((tmp_path / "runs" / "auto" / "config.yaml").read_text())
    assert recorded["recipe"] == "auto" and recorded["img_size"] == 32 and recorded["batch_size"] == 16
    assert recorded["recipe_choices"] == line
    # a run's own config.yaml starts the same run: every option is given there, the recipe changes none
    assert main([*common, "--name", "again", "-c", str(tmp_path / "runs" / "auto" / "config.yaml")]) == 0
    assert "recipe auto: the options as given" in capsys.readouterr().err
    again = yaml.safe_load((tmp_path / "runs" / "again" / "config.yaml").read_text())
    assert {k: again[k] for k in TrainConfig.field_names() if k not in ("name", "output")} == \
        {k: recorded[k] for k in TrainConfig.field_names() if k not in ("name", "output")}
    assert main([*common, "--name", "imagenet", "--recipe", "imagenet"]) == 0
    assert "recipe imagenet: the options as given" in capsys.readouterr().err
    plain = yaml.safe_load((tmp_path / "runs" / "imagenet" / "config.yaml").read_text())
    defaults = TrainConfig()
    assert (plain["img_size"], plain["batch_size"], plain["lr"]) == (None, defaults.batch_size, defaults.lr)


def test_a_config_yaml_from_before_the_recipe_starts_its_run_again(tmp_path):
    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("recipe", "crop_scale", "head_epochs",
                                                                         "layer_decay")}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({**old, "resolved_lr": 0.1, "world_size": 1}))
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"epochs": 3}))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(["-c", str(tmp_path / "old.yaml")])).recipe == "imagenet"
    assert config_from_args(parser.parse_args(["-c", str(tmp_path / "mine.yaml")])).recipe == "auto"
