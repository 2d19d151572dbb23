"""--decode-on-device: which files go to the device decoder, what it gives back, and how failures are named."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import resnets
from resnets.data import device_decode
from resnets.data.bad_files import Unreadable
from resnets.data.device_decode import EncodedFiles, decode_batch, device_decodable
from resnets.data.images import load_image


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


def test_device_decoded_images_match_the_cpu_pipeline(tmp_path):
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
    images, broken = decode_batch(payloads, paths, torch.device("cpu"))
    assert broken == []
    for image, (path, _) in zip(images, samples):
        expected = v2.functional.pil_to_tensor(load_image(path))
        assert image.shape == expected.shape  # EXIF orientation applied (40x30 stored, rotated to 30x40)
        assert (image.float() - expected.float()).abs().mean() < 2.0


def test_a_batch_the_device_decoder_refuses_is_decoded_file_by_file(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("nvjpeg: corrupt stream")

    monkeypatch.setattr(device_decode, "decode_jpeg", refuse)
    good, bad = torch.frombuffer(bytearray(jpeg()), dtype=torch.uint8), torch.frombuffer(bytearray(b"\xff\xd8\xffjunk\xff\xd9"), dtype=torch.uint8)
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: nvJPEG")
def test_gpu_decoding_agrees_with_the_cpu(monkeypatch):
    # One batched nvJPEG call with mixed sizes, a greyscale file among them, and an EXIF-rotated one. nvJPEG
    # and libjpeg differ in IDCT and chroma upsampling: on these smooth images by up to 3.2 levels on average
    # (seen on an H100), on white noise by 13. A wrong decode (orientation, channels, garbage) is far off.
    files = [jpeg(size=(64, 48), smooth=True), jpeg("L", (33, 70), smooth=True),
             jpeg(size=(40, 30), exif_orientation=6, smooth=True), jpeg(size=(17, 9), smooth=True)]
    payloads = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
    names = [f"{i}.jpg" for i in range(len(files))]
    cpu, cpu_broken = decode_batch(payloads, names, torch.device("cpu"))

    def no_fallback(*args):
        raise AssertionError("the batch fell back to the CPU decoder")

    monkeypatch.setattr(device_decode, "decode_image", no_fallback)
    gpu, gpu_broken = decode_batch(payloads, names, torch.device("cuda"))
    assert not gpu_broken and not cpu_broken
    for g, c in zip(gpu, cpu):
        assert g.is_cuda and g.shape == c.shape == (3, *c.shape[1:])
        difference = (g.cpu().float() - c.float()).abs().mean().item()
        print(f"{tuple(c.shape)}: mean |gpu - cpu| = {difference:.2f}")
        assert difference < 6.0
