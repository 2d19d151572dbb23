"""Reading and writing weights: formats, wrappers, fine-tuning heads, refusals, and foreign layouts."""
from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from resnets.errors import CheckpointError
from resnets import create_model
from resnets.models import cifar_resnext
from resnets.hub import from_pretrained, load_model, save_pretrained
from resnets.models.weights import load_weights, save_weights


def _assert_same_tensors(model: nn.Module, state: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    loaded = model.state_dict()
    keys = [k for k in state if not k.startswith(skip)]
    assert keys, "nothing to compare"
    different = [k for k in keys if not torch.equal(loaded[k], state[k])]
    assert not different, f"tensors not loaded: {different[:5]}"


@pytest.fixture
def trained(randomize_bn):
    """A small model with non-default values in every tensor (as after training), and its state dict."""
    model = randomize_bn(create_model("cifar_resnet20", zero_init_last=False)).eval()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _fresh() -> nn.Module:
    torch.manual_seed(1)  # other random weights than `trained`'s
    return create_model("cifar_resnet20", zero_init_last=False).eval()


def _save(state: dict, path) -> None:
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save(state, path)


# --- formats and wrappers -------------------------------------------------------------------------

@pytest.mark.parametrize("filename", ["w.safetensors", "w.pth"])
def test_roundtrip(filename, trained, tmp_path, assert_close):
    model, state = trained
    path = tmp_path / filename
    _save(state, path)
    fresh = _fresh()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(fresh(x), model(x))  # the load below has something to do
    report = load_weights(fresh, path)
    assert report.skipped == [] and str(path) in str(report)
    _assert_same_tensors(fresh, state)
    with torch.no_grad():
        assert_close(fresh(x), model(x))


@pytest.mark.parametrize("wrap, epoch", [
    (lambda s: {f"module.{k}": v for k, v in s.items()}, None),  # nn.DataParallel / DDP
    (lambda s: {f"_orig_mod.{k}": v for k, v in s.items()}, None),  # torch.compile
    (lambda s: {"state_dict": s, "epoch": 7}, 7),  # a training checkpoint
    (lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}, "epoch": 7}, 7),
], ids=["module-prefix", "compile-prefix", "state_dict-wrapper", "wrapper-and-prefix"])
def test_wrappers_and_prefixes_are_undone(wrap, epoch, trained, tmp_path):
    model, state = trained
    path = tmp_path / "w.pth"
    torch.save(wrap(state), path)
    fresh = _fresh()
    report = load_weights(fresh, path)
    _assert_same_tensors(fresh, state)
    assert report.metadata.get("epoch") == epoch  # what sits beside the tensors is kept as metadata


def test_fine_tuning_head_of_another_size_is_skipped_and_reported(tmp_path, randomize_bn):
    source = randomize_bn(create_model("resnet18"))
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / "imagenet.safetensors"
    safetensors.torch.save_file(state, str(path))
    model = create_model("resnet18", num_classes=10)
    fresh_head = model.fc.weight.clone()
    report = load_weights(model, path)
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert "left freshly initialised" in str(report) and "fc.weight" in str(report)
    _assert_same_tensors(model, state, skip=("fc.",))  # every backbone tensor, BN statistics included
    assert model.fc.weight.shape == (10, 512)
    assert torch.equal(model.fc.weight, fresh_head)  # the new head keeps its own init

    via_create = create_model("resnet18", num_classes=10, pretrained=str(path))
    _assert_same_tensors(via_create, state, skip=("fc.",))


def test_checkpoint_of_another_depth_is_refused(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(create_model("resnet18").state_dict(), path)
    model = create_model("resnet34")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_weights(model, path)
    message = str(err.value)
    assert str(path) in message and "resnet34" in message
    assert "missing" in message and "layer1.2." in message
    _assert_same_tensors(model, before)  # nothing half-loaded


def test_checkpoint_of_another_width_is_refused(tmp_path):
    path = tmp_path / "narrow.safetensors"
    safetensors.torch.save_file(cifar_resnext(11, cardinality=2, base_width=4).state_dict(), str(path))
    with pytest.raises(CheckpointError) as err:
        load_weights(cifar_resnext(11, cardinality=2, base_width=8), path)
    message = str(err.value)
    assert str(path) in message and "of another shape" in message
    assert "file (8,) vs model (16,)" in message  # 2 groups x 4 wide vs 2 x 8


def test_plain_load_state_dict_would_not_skip_the_head(tmp_path):
    """The skip above is our loader's doing: without it, a head of another size is an error."""
    with pytest.raises(RuntimeError, match="size mismatch for fc.weight"):
        create_model("cifar_resnet20", num_classes=3).load_state_dict(create_model("cifar_resnet20").state_dict())


# --- refusals -------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this calls open(marker, "w"): code execution hidden in a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(16, 3, 3, 3), "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        load_weights(create_model("cifar_resnet20"), path)
    assert str(path) in str(err.value) and "refused" in str(err.value)
    assert not marker.exists()

    # The payload is real: an unrestricted load runs it.
    control_marker, control = tmp_path / "control", tmp_path / "control.pth"
    torch.save({"payload": _Payload(control_marker)}, control)
    torch.load(control, weights_only=False)
    assert control_marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_empty_file_is_refused(suffix, tmp_path):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=str(path)):
        load_weights(create_model("cifar_resnet20"), path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_refused(suffix, trained, tmp_path):
    path = tmp_path / f"cut{suffix}"
    _save(trained[1], path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        load_weights(create_model("cifar_resnet20"), path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        load_weights(create_model("cifar_resnet20"), tmp_path / "nope.pth")


def test_non_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_weights(create_model("cifar_resnet20"), path)


# --- save_pretrained / from_pretrained ------------------------------------------------------------

def test_save_pretrained_roundtrip(tmp_path, randomize_bn, assert_close):
    model = randomize_bn(create_model("cifar_resnet20", num_classes=3)).eval()
    names = ["cat", "dog", "frog"]
    folder = save_pretrained(model, tmp_path / "pretrained", class_names=names)

    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "resnets-cifar_resnet20"  # a name timm does not have: it refuses the folder
    assert config["label_names"] == names  # timm's key
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pretrained_cfg"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])

    loaded = from_pretrained(folder).eval()
    assert loaded.num_classes == 3 and loaded.class_names == names
    assert tuple(loaded.pretrained_cfg["input_size"]) == (3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(loaded(x), model(x))

    via_create = create_model("cifar_resnet20", num_classes=3, pretrained=str(folder)).eval()
    with torch.no_grad():
        assert_close(via_create(x), model(x))


def test_save_pretrained_keeps_architecture_overrides(tmp_path):
    model = create_model("resnet18", num_classes=5, global_pool="catavgmax", in_chans=1)
    loaded = from_pretrained(save_pretrained(model, tmp_path / "m"))
    assert loaded.get_classifier().in_features == 1024
    assert loaded.conv1.weight.shape[1] == 1
    _assert_same_tensors(loaded, model.state_dict())


def test_save_pretrained_rejects_wrong_number_of_class_names(tmp_path):
    with pytest.raises(CheckpointError, match="2 class names"):
        save_pretrained(create_model("cifar_resnet20", num_classes=3), tmp_path / "m", class_names=["a", "b"])


# --- prlz77/ResNeXt.pytorch CIFAR checkpoints -----------------------------------------------------
# A stand-in with the parameter names and structure of prlz77's CifarResNeXt, written from its
# description (their checkpoints are not downloadable here).

class _Prlz77Bottleneck(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, cardinality: int, base_width: int, widen_factor: int):
        super().__init__()
        d = cardinality * int(base_width * out_ch / (widen_factor * 64))
        self.conv_reduce = nn.Conv2d(in_ch, d, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(d)
        self.conv_conv = nn.Conv2d(d, d, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn = nn.BatchNorm2d(d)
        self.conv_expand = nn.Conv2d(d, out_ch, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if in_ch != out_ch:
            self.shortcut.add_module("shortcut_conv", nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False))
            self.shortcut.add_module("shortcut_bn", nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn_reduce(self.conv_reduce(x)))
        out = F.relu(self.bn(self.conv_conv(out)))
        out = self.bn_expand(self.conv_expand(out))
        return F.relu(self.shortcut(x) + out)


class _Prlz77CifarResNeXt(nn.Module):
    def __init__(self, cardinality: int, depth: int, num_classes: int, base_width: int, widen_factor: int = 4):
        super().__init__()
        n = (depth - 2) // 9
        widths = [64, 64 * widen_factor, 128 * widen_factor, 256 * widen_factor]
        self.conv_1_3x3 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn_1 = nn.BatchNorm2d(64)
        for s in range(1, 4):
            stage = nn.Sequential()
            for j in range(n):
                in_ch = widths[s - 1] if j == 0 else widths[s]
                stride = 2 if j == 0 and s > 1 else 1
                stage.add_module(f"stage_{s}_bottleneck_{j}", _Prlz77Bottleneck(
                    in_ch, widths[s], stride, cardinality, base_width, widen_factor))
            self.add_module(f"stage_{s}", stage)
        self.classifier = nn.Linear(widths[3], num_classes)
        self.out_ch = widths[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_1(self.conv_1_3x3(x)))
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        x = F.avg_pool2d(x, 8, 1).view(-1, self.out_ch)  # 8x8 maps at 32x32 input: a global average
        return self.classifier(x)


def _check_prlz77(ours: nn.Module, ref: nn.Module, tmp_path, randomize_bn, assert_close) -> None:
    randomize_bn(ref).eval()
    path = tmp_path / "prlz77.pth"
    # Their checkpoints were saved from nn.DataParallel, hence the prefix.
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, path)
    report = load_weights(ours, path)
    assert report.skipped == []
    ours.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(ours(x), ref(x))


def test_prlz77_checkpoint_loads(tmp_path, randomize_bn, assert_close):
    # Depth 29 keeps blocks with and without a projection shortcut; narrow groups keep it fast.
    ref = _Prlz77CifarResNeXt(cardinality=2, depth=29, num_classes=10, base_width=4)
    ours = cifar_resnext(depth=29, cardinality=2, base_width=4)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    _check_prlz77(ours, ref, tmp_path, randomize_bn, assert_close)


@pytest.mark.slow
def test_prlz77_resnext29_8x64d_loads(tmp_path, randomize_bn, assert_close):
    ref = _Prlz77CifarResNeXt(cardinality=8, depth=29, num_classes=10, base_width=64)
    _check_prlz77(create_model("cifar_resnext29_8x64d"), ref, tmp_path, randomize_bn, assert_close)


def test_a_file_that_is_no_weights_file_is_named_so(tmp_path):
    """An ONNX file given as the checkpoint was 'refused, it holds pickled objects': its bytes are no pickle."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(range(256)))
    with pytest.raises(CheckpointError, match="not a weights file \\(neither safetensors nor a torch.save file\\)"):
        load_weights(create_model("cifar_resnet20"), path)


@pytest.mark.parametrize("name", ["W.SAFETENSORS", "w.pt"])
def test_safetensors_under_another_name_loads(tmp_path, name):
    model = create_model("cifar_resnet20", num_classes=3)
    save_weights(model, tmp_path / "w.safetensors", ["a", "b", "c"])
    (tmp_path / "w.safetensors").rename(tmp_path / name)  # said 'neither safetensors nor a torch.save file'
    loaded = load_model(tmp_path / name)
    assert loaded.class_names == ["a", "b", "c"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_a_resume_state_given_as_a_model_is_named_so(tmp_path):
    model = create_model("cifar_resnet20")
    torch.save(dict(model=model.state_dict(), optimizer={}, progress={}, config={"accum_steps": 1}),
               tmp_path / "checkpoint-0001-000000010.pt")  # said 'not a resnets config (unknown argument(s)...)'
    with pytest.raises(CheckpointError, match="a training checkpoint .*use best.safetensors or last.safetensors"):
        load_model(tmp_path / "checkpoint-0001-000000010.pt")
