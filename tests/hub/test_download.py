"""Published weights by name: fetched from the (fake) Hub or a URL, verified, cached, and each failure one clear
error with nothing left in the cache that a later run would trust."""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import huggingface_hub
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save

import resnets
import resnets.cli
from resnets.errors import CheckpointError, DownloadError
from resnets.hub import imagenet_class_names
from resnets.hub.catalog import catalog


def _equal(model, state) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_pretrained_true_fetches_the_default_set_once_and_brings_its_preprocessing_and_classes(published):
    model = resnets.create_model("resnet18", pretrained=True)  # timm's default for resnet18: a1_in1k
    assert _equal(model, published.state)
    assert model.pretrained_cfg == resnets.list_weights("resnet18.a1_in1k")[0].pretrained_cfg
    assert model.class_names == imagenet_class_names() and model.class_names[0] == "tench"
    downloads = published.hub.downloads()
    assert downloads == ["/timm/resnet18.a1_in1k/resolve/main/model.safetensors"]
    again = resnets.create_model("resnet18.a1_in1k", pretrained=True)  # from the cache: not one request more
    assert published.hub.downloads() == downloads and _equal(again, published.state)


def test_a_url_set_is_checked_against_the_sha256_in_its_name_and_shows_progress(published, capfd):
    model = resnets.create_model("resnet18.tv_in1k", pretrained=True, num_classes=10)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in published.state.items() if not k.startswith("fc."))
    assert model.class_names is None  # a new head of 10 classes: the ImageNet names do not apply
    assert "100%" in capfd.readouterr().err  # torch.hub's progress bar


def test_a_download_that_does_not_match_its_sha256_is_refused_and_not_kept(hub, cached_files):
    url = hub.file_url("resnet18-deadbeef.pth", b"PK\x03\x04 not the file whose hash is in its name")
    with pytest.raises(DownloadError, match="does not match its sha256.*nothing was kept"):
        resnets.create_model("resnet18", pretrained=url)
    assert cached_files() == []


def test_a_dropped_connection_is_resumed_or_leaves_nothing(published, cached_files):
    # huggingface_hub resumes a Hub download where the connection dropped (a Range request), then checks the
    # whole file against its sha256; torch.hub starts over next time, keeping nothing of a broken download.
    published.hub.truncated.add("/timm/resnet18.a1_in1k/resolve/main/model.safetensors")
    assert _equal(resnets.create_model("resnet18", pretrained=True), published.state)
    published.hub.truncated.add(published.url.removeprefix(published.hub.url))
    with pytest.raises(DownloadError, match="resnet18.tv_in1k: .*nothing was kept"):  # caught by its sha256
        resnets.create_model("resnet18.tv_in1k", pretrained=True)
    assert not [p for p in cached_files() if "torch-hub" in p.parts]
    assert _equal(resnets.create_model("resnet18.tv_in1k", pretrained=True), published.state)  # the next run
    # A URL whose name carries no hash: the file must at least be whole
    url = published.hub.file_url("weights.pth", published.tv_bytes)
    published.hub.truncated.add("/files/weights.pth")
    with pytest.raises(DownloadError, match="is incomplete .*nothing was kept"):
        resnets.create_model("resnet18", pretrained=url)
    assert not [p for p in cached_files() if p.name == "weights.pth"]
    assert _equal(resnets.create_model("resnet18", pretrained=url), published.state)


@pytest.mark.parametrize("spec,needle", [
    ("hf-hub:nobody/nothing", "no repository 'nobody/nothing'"),
    ("hf-hub:a/b/c", "not a Hub repository name"),
    ("resnet18.a2_in1k", "has none of model.safetensors, pytorch_model.bin"),
    ("{url}/files/resnet18-0badcafe.pth", "answered 404"),
    ("resnet18.zz_in1k", "no weights tagged 'zz_in1k'"),
    ("resnet18-weights.pth", "no such weights file or folder"),
])
def test_each_missing_thing_is_one_clear_error(published, spec, needle):
    published.hub.publish("timm/resnet18.a2_in1k", "README.md", b"a card, no weights")
    with pytest.raises((DownloadError, CheckpointError, resnets.UnknownModelError), match=needle):
        resnets.create_model("resnet18", pretrained=spec.format(url=published.hub.url))


def test_a_missing_download_is_one_line_at_the_cli(published, capsys, tmp_path):
    code = resnets.cli.main(["predict", "--model", "resnet18.a2_in1k", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "resnet18.a2_in1k" in err


def test_an_unreachable_server_says_what_was_needed_and_where_to_put_it(published, monkeypatch):
    unreachable = "http://127.0.0.1:9"  # the discard port: nothing listens
    monkeypatch.setattr(hf_constants, "ENDPOINT", unreachable)
    template = unreachable + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    with pytest.raises(DownloadError) as info:
        resnets.create_model("resnet18", pretrained=True)
    message = str(info.value)
    assert "resnet18.a1_in1k: not in the cache and" in message and "timm/resnet18.a1_in1k" in message
    assert "resnets download resnet18.a1_in1k" in message and hf_constants.HF_HUB_CACHE in message


def test_offline_mode_uses_the_cache_and_names_what_is_missing(published, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DownloadError, match="offline mode .HF_HUB_OFFLINE. is on"):
        resnets.create_model("resnet18", pretrained=True)
    with pytest.raises(DownloadError, match="offline mode"):
        resnets.create_model("resnet18.tv_in1k", pretrained=True)
    assert published.hub.requests == []  # offline means not one request
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    resnets.hub.download(["resnet18", "resnet18.tv_in1k"])  # `resnets download` where there is a network
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    count = len(published.hub.requests)
    assert _equal(resnets.create_model("resnet18", pretrained=True), published.state)
    assert _equal(resnets.create_model("resnet18.tv_in1k", pretrained=True), published.state)
    assert len(published.hub.requests) == count


@pytest.mark.parametrize("name", ["resnet18.a1_in1k", "resnet18.tv_in1k"])
def test_a_cache_file_damaged_later_is_removed_not_loaded(published, cached_files, name):
    resnets.create_model(name, pretrained=True)
    (damaged,) = [p for p in cached_files() if p.stat().st_size > 1000 and not p.is_symlink()]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit flip, deep inside a tensor: the file still parses
    damaged.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="was damaged.*removed, the next run downloads it again"):
        resnets.create_model(name, pretrained=True)
    assert not damaged.exists()
    assert _equal(resnets.create_model(name, pretrained=True), published.state)


def test_a_hub_model_folder_loads_by_its_repo_name(hub, tmp_path):
    model = resnets.create_model("resnet18", num_classes=3, global_pool="max").eval()
    model.class_names = ["cat", "dog", "frog"]
    folder = resnets.save_pretrained(model, tmp_path / "folder")
    for name in ("config.json", "model.safetensors"):
        hub.publish("me/pets", name, (folder / name).read_bytes())
    loaded = resnets.create_model("hf-hub:me/pets", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.class_names == ["cat", "dog", "frog"] and loaded.cfg.global_pool == "max"
    untrained = resnets.create_model("hf-hub:me/pets")  # timm's semantics: the architecture, no weights
    assert untrained.cfg == model.cfg and not torch.equal(untrained.fc.weight, model.fc.weight)


def test_a_revision_picks_that_snapshot_of_a_repo(hub, tmp_path):
    folders = {}
    for revision, classes in (("main", 3), ("v1", 2)):
        model = resnets.create_model("resnet18", num_classes=classes).eval()
        folders[revision] = resnets.save_pretrained(model, tmp_path / revision)
        for name in ("config.json", "model.safetensors"):
            hub.publish("me/pets", name, (folders[revision] / name).read_bytes(), revision=revision)
    for spec, classes in (("hf-hub:me/pets", 3), ("hf-hub:me/pets@v1", 2)):
        model = resnets.create_model(spec, pretrained=True)
        assert model.num_classes == classes, spec
        assert torch.equal(model.fc.weight, resnets.load_model(folders["main" if classes == 3 else "v1"]).fc.weight)
    assert resnets.hub.fetch("hf-hub:me/pets@v1").read_bytes() == (folders["v1"] / "model.safetensors").read_bytes()
    with pytest.raises(DownloadError, match="me/pets has no revision 'v9'"):
        resnets.create_model("hf-hub:me/pets@v9")


def test_weights_for_rgb_are_adapted_to_one_or_more_input_channels(published):
    grey = resnets.create_model("resnet18", pretrained=True, in_chans=1)
    rgb = published.state["conv1.weight"]
    assert torch.allclose(grey.conv1.weight, rgb.sum(dim=1, keepdim=True))
    assert grey.pretrained_cfg.input_size[0] == 1 and len(grey.pretrained_cfg.mean) == 1
    five = resnets.create_model("resnet18", pretrained=True, in_chans=5)
    assert torch.allclose(five.conv1.weight, torch.cat([rgb, rgb[:, :2]], dim=1) * 3 / 5)


@pytest.mark.parametrize("in_chans", [1, 4])
def test_a_model_for_other_than_rgb_input_predicts_from_rgb_files(tmp_path, capsys, in_chans):
    from PIL import Image

    model = resnets.create_model("resnet18", in_chans=in_chans, num_classes=2)
    model.class_names = ["dark", "light"]
    folder = resnets.save_pretrained(model, tmp_path / "folder")
    Image.new("RGB", (40, 30), "orange").save(tmp_path / "photo.png")
    for command in (["predict", "--weights", str(folder)], ["cam", "--weights", str(folder), "--output",
                                                            str(tmp_path / "cams")]):
        assert resnets.cli.main([*command, str(tmp_path / "photo.png")]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines()[1].split(",")[1] in ("dark", "light")


@pytest.mark.parametrize("weights", [["--model", "resnet18.a1_in1k"], ["--model", "resnet18"],
                                     ["--pretrained", "resnet18.tv_in1k"], ["--model", "resnet18", "--pretrained",
                                                                            "tv_in1k"]])
def test_predict_with_a_published_set_prints_imagenet_names_with_no_training(published, tmp_path, capsys, weights):
    from PIL import Image

    Image.new("RGB", (40, 30), "orange").save(tmp_path / "photo.png")
    assert resnets.cli.main(["predict", *weights, "--topk", "2", str(tmp_path / "photo.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "file,top1_class,top1_prob,top2_class,top2_prob"
    names = set(imagenet_class_names())
    row = out[1].split(",")
    assert row[1] in names and row[3] in names


def test_the_weights_and_download_commands(published, capsys):
    assert resnets.cli.main(["weights", "resnet18"]) == 0
    table = capsys.readouterr().out
    assert "resnet18.a1_in1k" in table and "resnet18.tv_in1k" in table and "73.16" in table
    assert resnets.cli.main(["download", "resnet18.a1_in1k", "resnet18.tv_in1k"]) == 0
    capsys.readouterr()
    assert resnets.cli.main(["weights", "resnet18.a1_in1k"]) == 0
    assert "yes" in capsys.readouterr().out  # cached now
    assert resnets.cli.main(["download", "resnet18.zz_in1k"]) == 2
    assert "no weights tagged 'zz_in1k'" in capsys.readouterr().err


def test_a_set_published_as_pytorch_model_bin_loads_too(published):
    published.hub.publish("timm/resnet18.gluon_in1k", "pytorch_model.bin", published.tv_bytes)
    model = resnets.create_model("resnet18.gluon_in1k", pretrained=True)
    assert _equal(model, published.state)
    assert published.hub.downloads()[-1] == "/timm/resnet18.gluon_in1k/resolve/main/pytorch_model.bin"


def test_push_to_hub_uploads_the_saved_folder(monkeypatch):
    uploaded = {}

    def upload_folder(repo_id, folder_path, token, commit_message):
        uploaded.update(repo=repo_id, files=sorted(p.name for p in Path(folder_path).iterdir()))
        return "https://huggingface.co/me/pets/commit/1"

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kwargs: uploaded.update(created=repo_id))
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    model = resnets.cifar_resnet(8, num_classes=2)
    assert resnets.hub.push_to_hub(model, "me/pets", ["cat", "dog"]).endswith("/commit/1")
    assert uploaded == {"created": "me/pets", "repo": "me/pets",
                        "files": ["README.md", "config.json", "model.safetensors"]}


def test_a_url_without_a_hash_is_checked_at_every_use_against_its_own_sha256(published, cached_files):
    url = published.hub.file_url("weights.pth", published.tv_bytes)
    resnets.create_model("resnet18", pretrained=url)
    (cached,) = [p for p in cached_files() if p.name == "weights.pth"]
    assert cached.with_name("weights.pth.sha256").is_file()
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="damaged .its sha256 is not the one it had when downloaded.; it is remov"):
        resnets.create_model("resnet18", pretrained=url)
    assert not cached.exists()
    assert _equal(resnets.create_model("resnet18", pretrained=url), published.state)


def test_a_url_of_torch_saves_legacy_format_downloads(published, tmp_path):
    buf = io.BytesIO()
    torch.save(published.state, buf, _use_new_zipfile_serialization=False)
    url = published.hub.file_url("legacy.pth", buf.getvalue())
    assert _equal(resnets.create_model("resnet18", pretrained=url), published.state)


@pytest.mark.parametrize("url", ["{url}/files/", "{url}/files/sub/.."])
def test_a_url_that_names_no_file_is_refused_before_downloading(published, url):
    with pytest.raises(DownloadError, match="names no file"):
        resnets.create_model("resnet18", pretrained=url.format(url=published.hub.url))
    assert published.hub.requests == []


def test_a_hub_file_that_is_not_whole_weights_is_not_kept(hub, cached_files):
    path = "/me/broken/resolve/main/model.safetensors"
    hub.publish("me/broken", "model.safetensors", b"<html>a proxy's error page</html>")
    hub.not_lfs.add(path)  # no sha256 to check it against: only its content can tell
    with pytest.raises(DownloadError, match="not a whole weights file.*removed"):
        resnets.create_model("resnet18", pretrained="hf-hub:me/broken")
    assert not [p for p in cached_files() if p.stat().st_size == 33]


def test_a_published_set_once_cached_is_used_without_asking_the_hub(published):
    resnets.create_model("resnet18", pretrained=True)
    count = len(published.hub.requests)
    resnets.create_model("resnet18", pretrained=True)
    assert len(published.hub.requests) == count  # no HEAD either: a published set does not change


def test_download_of_a_hub_model_folder_fetches_its_config_for_offline_use(hub, tmp_path, monkeypatch):
    folder = resnets.save_pretrained(resnets.create_model("resnet18", num_classes=3), tmp_path / "folder")
    for name in ("config.json", "model.safetensors"):
        hub.publish("me/pets", name, (folder / name).read_bytes())
    resnets.hub.download(["hf-hub:me/pets"])
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert resnets.create_model("hf-hub:me/pets", pretrained=True).num_classes == 3


def test_a_backbone_set_without_a_head_loads_with_a_fresh_one(published, monkeypatch):
    headless = {k: v for k, v in published.state.items() if not k.startswith("fc.")}
    published.hub.publish("timm/resnet18.headless", "model.safetensors", save(headless))
    sets = catalog()
    monkeypatch.setitem(sets, "resnet18.headless", dataclasses.replace(
        sets["resnet18.a1_in1k"], name="resnet18.headless", source="hf-hub:timm/resnet18.headless", num_classes=0,
        labels="", default=False))
    assert resnets.create_model("resnet18.headless", pretrained=True).num_classes == 0  # the set's own: none
    model = resnets.create_model("resnet18.headless", pretrained=True, num_classes=5)
    assert model.num_classes == 5 and _equal(model, headless)


def test_weights_of_another_set_bring_their_own_test_size(published):
    model = resnets.create_model("resnet18.a1_in1k", pretrained="tv_in1k")
    assert model.pretrained_cfg == catalog()["resnet18.tv_in1k"].pretrained_cfg
    assert model.pretrained_cfg.test_input_size is None  # a1_in1k's 288 does not carry over


def test_a_published_name_wins_over_a_folder_of_that_name_here(published, tmp_path, monkeypatch):
    (tmp_path / "resnet18").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resnets.hub.download(["resnet18"])[0].weight_set.name == "resnet18.a1_in1k"
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        resnets.hub.download(["./resnet18"])


def test_a_ready_model_whose_file_lacks_its_classifier_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from resnets.models.weights import DIGEST_KEY, read_state_dict, save_weights

    path = save_weights(resnets.create_model("resnet18", num_classes=3), tmp_path / "w.safetensors")
    headless = {k: v for k, v in read_state_dict(path)[0].items() if not k.startswith("fc.")}
    with safe_open(str(path), "pt") as f:  # its metadata kept, its head cut (and the checksum of the whole dropped)
        metadata = {k: v for k, v in f.metadata().items() if k != DIGEST_KEY}
    save_file(headless, str(tmp_path / "cut.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match="classifier does not fit the 3 classes"):
        resnets.load_model(tmp_path / "cut.safetensors")
