"""--decode-on-device: which files go to the device decoder, what it gives back, and how failures are named."""
from __future__ import annotations

import io
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

import resnets
from resnets.data import device_decode
from resnets.data.bad_files import BadFiles, Unreadable
from resnets.data.device_decode import (JPEG_DECODERS, DeviceDecodeLoader, EncodedFiles, collate_encoded,
                                        decode_batch, device_decodable, jpeg_decoder)
from resnets.data.images import load_image
from resnets.data.in_memory import DeviceAugment
from resnets.models import get_config
from resnets.training.sampling import EpochSampler

HAS_TORCHCODEC = jpeg_decoder() == "torchcodec"  # installed, and it decodes here
DECODERS = [pytest.param("torchcodec", marks=pytest.mark.skipif(not HAS_TORCHCODEC, reason="torchcodec not installed")),
            "torchvision"]


def jpeg(mode: str = "RGB", size=(40, 30), exif_orientation: int | None = None, smooth: bool = False) -> bytes:
    """Random pixels as JPEG; `smooth`: a photo-like colour field instead (4 x 4 random colours, bicubic)."""
    rng = np.random.default_rng(0)
    if smooth:
        image = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    else:
        image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    image = image.convert(mode)
    buf = io.BytesIO()
    kwargs = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    image.save(buf, "JPEG", quality=95, **kwargs)
    return buf.getvalue()


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("data,expected", [
    (jpeg(), True), (jpeg("L"), True), (jpeg("CMYK"), False), (jpeg()[:-200], False), (png(), False),
    (b"just some text", False),
])
def test_only_plain_complete_jpegs_go_to_the_device(data, expected):
    assert device_decodable(data) is expected


@pytest.mark.parametrize("decoder", DECODERS)
def test_device_decoded_images_match_the_cpu_pipeline(tmp_path, decoder):
    files = {"rotated.jpg": jpeg(exif_orientation=6), "grey.jpg": jpeg("L"), "cmyk.jpg": jpeg("CMYK"),
             "image.png": png(), "broken.jpg": jpeg()[:-300]}
    samples = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        samples.append((str(tmp_path / name), 0))
    items = [EncodedFiles(samples)[i] for i in range(len(samples))]
    assert [item[0].ndim if not isinstance(item, Unreadable) else None for item in items] == [1, 1, 3, 3, None]
    assert "truncated" in items[-1].reason
    payloads, paths = [item[0] for item in items[:-1]], [item[2] for item in items[:-1]]
    images, broken = decode_batch(payloads, paths, torch.device("cpu"), decoder)
    assert broken == []
    for image, (path, _) in zip(images, samples):
        expected = v2.functional.pil_to_tensor(load_image(path))
        assert image.shape == expected.shape  # EXIF orientation applied (40x30 stored, rotated to 30x40)
        assert (image.float() - expected.float()).abs().mean() < 2.0


def test_a_batch_the_device_decoder_refuses_is_decoded_file_by_file(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("nvjpeg: corrupt stream")

    monkeypatch.setitem(JPEG_DECODERS, jpeg_decoder(), refuse)
    good = torch.frombuffer(bytearray(jpeg()), dtype=torch.uint8)
    bad = torch.frombuffer(bytearray(b"\xff\xd8\xffjunk\xff\xd9"), dtype=torch.uint8)
    images, broken = decode_batch([good, bad], ["good.jpg", "bad.jpg"], torch.device("cpu"))
    assert images[0] is not None and images[0].shape == (3, 30, 40) and images[1] is None
    assert [b.file for b in broken] == ["bad.jpg"]


def test_training_with_decode_on_device_skips_and_lists_broken_files(tmp_path):
    rng = np.random.default_rng(1)
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(30):
            size = (int(rng.integers(30, 80)), int(rng.integers(30, 80)))
            (tmp_path / "data" / label / f"{i}.jpg").write_bytes(jpeg(size=size))
    (tmp_path / "data" / "a" / "cmyk.jpg").write_bytes(jpeg("CMYK"))
    (tmp_path / "data" / "b" / "broken.jpg").write_bytes(jpeg()[:-300])
    result = resnets.train(data_dir=str(tmp_path / "data"), model="cifar_resnet20", decode_on_device=True,
                           epochs=1, batch_size=8, workers=0, max_bad_fraction=0.05, output=str(tmp_path / "runs"),
                           progress=False)
    listed = (result.run_dir / "bad_files.csv").read_text()
    assert "broken.jpg" in listed and "cmyk.jpg" not in listed


def test_torchcodec_decodes_where_it_works_and_torchvision_elsewhere(monkeypatch, capsys):
    # torchvision's image decoding is deprecated since 0.29; TorchCodec (>= 0.16) succeeds it
    def broken(*args):
        raise RuntimeError("torchcodec was not compiled with nvJPEG support\nmore")

    try:
        device_decode._working_decoder.cache_clear()
        for name in ("torchcodec", "torchcodec.decoders"):  # not installed: its import fails
            monkeypatch.setitem(sys.modules, name, None)
        assert jpeg_decoder() == "torchvision" and capsys.readouterr().err == ""
        monkeypatch.undo()
        device_decode._working_decoder.cache_clear()
        monkeypatch.setattr(device_decode, "_torchcodec_decode", broken)  # installed, but it cannot decode
        assert jpeg_decoder("cpu") == "torchvision"
        assert capsys.readouterr().err == ("warning: TorchCodec cannot decode JPEGs on cpu (RuntimeError: torchcodec "
                                           "was not compiled with nvJPEG support); using torchvision's decoder\n")
    finally:
        device_decode._working_decoder.cache_clear()


def test_a_device_decoder_that_fails_on_good_files_is_reported_once(monkeypatch, capsys):
    def refuse(*args):
        raise RuntimeError("nvjpeg: status 7")

    monkeypatch.setitem(JPEG_DECODERS, "torchvision", refuse)
    good = torch.frombuffer(bytearray(jpeg()), dtype=torch.uint8)
    for _ in range(3):
        images, broken = decode_batch([good, good], ["a.jpg", "b.jpg"], torch.device("cpu"), "torchvision")
        assert not broken and all(image.shape == (3, 30, 40) for image in images)
    assert capsys.readouterr().err.count("warning: the torchvision JPEG decoder failed") == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: nvJPEG")
@pytest.mark.parametrize("decoder", DECODERS)
def test_gpu_decoding_agrees_with_the_cpu(monkeypatch, decoder):
    # One batched nvJPEG call with mixed sizes, a greyscale file among them, and an EXIF-rotated one. nvJPEG
    # and libjpeg differ in IDCT and chroma upsampling: on these smooth images by up to 3.2 levels on average
    # (seen on an H100), on white noise by 13. A wrong decode (orientation, channels, garbage) is far off.
    files = [jpeg(size=(64, 48), smooth=True), jpeg("L", (33, 70), smooth=True),
             jpeg(size=(40, 30), exif_orientation=6, smooth=True), jpeg(size=(17, 9), smooth=True)]
    payloads = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
    names = [f"{i}.jpg" for i in range(len(files))]
    cpu, cpu_broken = decode_batch(payloads, names, torch.device("cpu"), decoder)

    def no_fallback(*args):
        raise AssertionError("the batch fell back to the CPU decoder")

    monkeypatch.setattr(device_decode, "decode_image", no_fallback)
    gpu, gpu_broken = decode_batch(payloads, names, torch.device("cuda"), decoder)
    assert not gpu_broken and not cpu_broken
    for g, c in zip(gpu, cpu):
        assert g.is_cuda and g.shape == c.shape == (3, *c.shape[1:])
        difference = (g.cpu().float() - c.float()).abs().mean().item()
        print(f"{tuple(c.shape)}: mean |gpu - cpu| = {difference:.2f}")
        assert difference < 6.0


def jpeg_folder(root: Path, count: int = 20, broken: tuple[int, ...] = ()) -> list[tuple[str, int]]:
    """`count` photo-like JPEGs of assorted sizes (those at `broken` truncated), as (path, label) samples."""
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
        data = jpeg(size=size, smooth=True)
        (root / f"{i}.jpg").write_bytes(data[:-300] if i in broken else data)
        samples.append((str(root / f"{i}.jpg"), i % 2))
    return samples


def decoding_loader(samples, batch_size: int = 4, device: str = "cpu", **kwargs) -> DeviceDecodeLoader:
    sampler = EpochSampler(len(samples), seed=0)
    files = DataLoader(EncodedFiles(samples), batch_size=batch_size, sampler=sampler, collate_fn=collate_encoded)
    augment = DeviceAugment(get_config("cifar_resnet20").default_pretrained_cfg(), 16, hflip=0.5)
    return DeviceDecodeLoader(files, sampler, augment, torch.device(device), BadFiles(len(samples), 0.5), **kwargs)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU: the decoding thread's own stream"))])
def test_batches_decoded_ahead_on_their_own_thread_are_those_decoded_in_turn(tmp_path, monkeypatch, device):
    order = [index for _, index in EpochSampler(20, seed=0)]
    broken = (*order[8:12], order[13])  # batch 3: nothing readable; batch 4: one broken file
    samples = jpeg_folder(tmp_path, broken=broken)
    threads = set()
    decode = JPEG_DECODERS[jpeg_decoder()]
    monkeypatch.setitem(JPEG_DECODERS, jpeg_decoder(),
                        lambda *args: threads.add(threading.current_thread().name) or decode(*args))
    in_turn = []  # decode_batch and the augmentation called batch by batch, as before the decoding thread
    for k, (payloads, labels, paths, unreadable) in enumerate(decoding_loader(samples).loader):
        images, _ = decode_batch(payloads, paths, torch.device(device))
        keep = [i for i, image in enumerate(images) if image is not None]
        g = EpochSampler(len(samples), seed=0).batch_generator(k, 4)
        in_turn.append((DeviceAugment(get_config("cifar_resnet20").default_pretrained_cfg(), 16, hflip=0.5)
                        .from_images([images[i] for i in keep], g), labels[keep]) if keep else None)
    assert threading.current_thread().name in threads and in_turn[2] is None
    for prefetch in (1, 3):
        threads.clear()
        loader = decoding_loader(samples, device=device, prefetch=prefetch)
        batches = list(loader)
        assert threads and all(name.startswith("resnets-decode") for name in threads)
        assert len(batches) == len(in_turn) == 5 and batches[2][1].numel() == 0  # yielded empty, and counted
        assert loader.yields_empty_batches  # so the processes of a run agree on skipping such a batch
        for (images, labels), expected in zip(batches, in_turn):
            if expected is not None:
                assert torch.equal(images.cpu(), expected[0].cpu()) and torch.equal(labels.cpu(), expected[1])
        assert sorted(loader.bad_files.reasons) == sorted(samples[i][0] for i in broken)


def test_the_decoding_thread_ends_with_the_epoch_and_hands_its_errors_to_the_caller(tmp_path, monkeypatch):
    samples = jpeg_folder(tmp_path)
    epoch = iter(decoding_loader(samples))
    next(epoch)
    assert any(t.name.startswith("resnets-decode") for t in threading.enumerate())
    epoch.close()  # the caller stopped early (an error in its step, say)
    assert not any(t.name.startswith("resnets-decode") for t in threading.enumerate())

    def fail(*args):
        raise ValueError("from the decoding thread")

    monkeypatch.setitem(JPEG_DECODERS, jpeg_decoder(), fail)
    with pytest.raises(ValueError, match="from the decoding thread"):
        next(iter(decoding_loader(samples)))


def test_the_gpu_measurement_script_runs_every_variant_on_the_cpu(tmp_path):
    # benchmarks/device_decode.py decides on the GPU between the decoders and the decoding thread: it must
    # not be found broken there
    import json
    import os
    import subprocess

    for label in ("a", "b"):
        jpeg_folder(tmp_path / "data" / label, count=8)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "device_decode.py"), str(tmp_path / "data"),
                           "--device", "cpu", "--model", "cifar_resnet20", "--batch", "4", "--img-size", "32",
                           "--steps", "2", "--rounds", "1", "--workers", "0", "--json", str(tmp_path / "rows.json")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1",  # the caller's path too: it may hold TorchCodec
                               "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stderr
    rows = {r["stage"]: r["images_per_second"] for r in json.loads((tmp_path / "rows.json").read_text())["rows"]}
    decoders = ["torchcodec", "torchvision"] if HAS_TORCHCODEC else ["torchvision"]
    expected = {f"{stage}, {d}, {where}" for stage in ("files -> device batches", "step <- device decode")
                for d in decoders for where in ("in turn", "ahead on a thread")}
    assert expected | {"step <- synthetic", *(f"decode only, {d}" for d in decoders)} == rows.keys()
    assert all(v > 0 for v in rows.values())
