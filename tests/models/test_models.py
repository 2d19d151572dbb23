"""Every registered model answers the same API; the architecture options do what they say.

Parametrised over `list_models()` with small inputs (2x3x64x64, or 2x3x32x32 for the CIFAR models),
as timm's `tests/test_models.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from resnets.errors import ConfigError
from resnets import create_model
from resnets.models import FeatureExtractor, ResNet, cifar_resnet, cifar_resnext, list_models
from resnets.inference.fold import for_inference
from resnets.models.layers import DropPath

ALL_MODELS = list_models()
# Deeper or wider copies of a structure that a lighter model already covers (over 1.2 GMACs at the test
# size, or over 45M parameters). Every model runs the read-only forward tests by default; the heavy ones
# are trained one step (backward) only with `-m slow`, to keep the default suite within minutes on
# 2 cores.
HEAVY = {"resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2", "resnext101_32x4d", "resnext101_32x8d",
         "resnext101_64x4d", "seresnext101_32x4d", "res2net101_26w_4s", "res2net50_26w_6s", "res2net50_26w_8s",
         "cifar_resnext29_8x64d", "cifar_resnext29_16x64d"}
# torch.export takes 1-4 s a model on 2 cores; by default export one model of each structural kind
# (basic/bottleneck/res2 blocks, SE, groups, deep stem + avg_down, zero-pad shortcuts).
EXPORT_FAST = {"resnet18", "resnet50", "seresnext50_32x4d", "res2net50d", "res2next50", "cifar_resnet20"}


def _params(names: list[str], fast: set[str]) -> list:
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _is_cifar(model: nn.Module) -> bool:
    return model.pretrained_cfg["input_size"][-1] == 32


@dataclass
class Run:
    """A model with one input and what two separate forward passes gave for it."""

    model: ResNet
    x: torch.Tensor
    logits: torch.Tensor  # model(x)
    features: list[torch.Tensor]  # FeatureExtractor(model)(x), every level; the last is forward_features

    @property
    def size(self) -> int:
        return self.x.shape[-1]


@pytest.fixture(scope="module", params=ALL_MODELS)
def run(request) -> Run:
    """Build each model once (eval mode) for the read-only tests; pytest groups the tests by name."""
    torch.manual_seed(0)
    model = create_model(request.param).eval()
    size = 32 if _is_cifar(model) else 64
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return Run(model, x, model(x), FeatureExtractor(model)(x))


def test_registry_is_not_empty():
    assert len(ALL_MODELS) >= 25
    assert HEAVY < set(ALL_MODELS) and EXPORT_FAST < set(ALL_MODELS)
    assert list_models("cifar_*") and all(n.startswith("cifar_") for n in list_models("cifar_*"))


def test_forward_shape_and_finite(run):
    assert run.model.num_classes == (10 if _is_cifar(run.model) else 1000)
    assert run.logits.shape == (2, run.model.num_classes)
    assert torch.isfinite(run.logits).all()
    assert not torch.allclose(run.logits[0], run.logits[1])  # the output depends on the input


@torch.no_grad()
def test_forward_features_and_head(run, assert_close):
    model, feats = run.model, run.features[-1]
    reduction = 4 if _is_cifar(model) else 32
    assert feats.shape == (2, model.num_features, run.size // reduction, run.size // reduction)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, model.num_features)
    assert_close(pre, feats.mean((2, 3)))
    # The backbone's last level (a second forward pass) gives back the full model's logits.
    assert_close(model.forward_head(feats), run.logits)


@torch.no_grad()
def test_reset_classifier(run, assert_close):
    model, feats = run.model, run.features[-1]
    old_fc, old_classes = model.get_classifier(), model.num_classes
    try:
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity)
        assert model.num_classes == 0
        out = model.forward_head(feats)
        assert out.shape == (2, model.num_features)
        assert_close(out, feats.mean((2, 3)))
        model.reset_classifier(7)
        assert model.forward_head(feats).shape == (2, 7)
        assert model.get_classifier().in_features == model.num_features
    finally:  # the model is shared by this module's tests
        model.fc, model.num_classes = old_fc, old_classes


def test_features_match_feature_info(run):
    info = run.model.feature_info
    assert [i["reduction"] for i in info] == ([1, 1, 2, 4] if _is_cifar(run.model) else [2, 4, 8, 16, 32])
    assert len(run.features) == len(info)
    for f, level in zip(run.features, info):
        side = run.size // level["reduction"]
        assert f.shape == (2, level["num_chs"], side, side), level
    assert info[-1]["num_chs"] == run.model.num_features


@pytest.mark.parametrize("name", _params(ALL_MODELS, set(ALL_MODELS) - HEAVY))
def test_num_classes_override_and_backward_reaches_every_parameter(name, make_input):
    # zero_init_last=False: a zeroed last BN would zero the gradients of its whole branch.
    model = create_model(name, num_classes=7, zero_init_last=False).train()
    x = make_input(model)
    y = model(x)
    assert y.shape == (2, 7)
    # A random projection of the logits: with y.sum(), train-mode BN could cancel constant gradients.
    (y * torch.randn_like(y)).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    zero_grad = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert not zero_grad, f"parameters with an all-zero gradient: {zero_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", _params(ALL_MODELS, EXPORT_FAST))
def test_torch_export_matches_eager(name, make_input, assert_close):
    model = create_model(name).eval()
    x = make_input(model)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert_close(exported.module()(x), model(x))


@pytest.mark.parametrize("name", _params(ALL_MODELS, EXPORT_FAST))
def test_folded_batchnorm_matches_eval_model(name, make_input, randomize_bn, assert_close):
    """predict and evaluate run this copy on the CPU: it must compute the same function with no BN left
    (random BN statistics and affine terms, so that a fold which ignores any of them changes the output),
    and leave the model it was made from untouched."""
    model = randomize_bn(create_model(name)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = make_input(model)
    folded = for_inference(model, torch.device("cpu"))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    convs = [m.weight for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)  # oneDNN's layout
    with torch.no_grad():
        assert_close(folded(x), model(x))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.is_contiguous() for p in model.parameters())  # the copy's layout only
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_a_model_with_hooks_or_that_cannot_be_traced_runs_unfolded(make_input):
    cpu = torch.device("cpu")
    hooked = create_model("cifar_resnet20")
    seen = []
    hooked.layer2.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    assert for_inference(hooked, cpu) is hooked and not seen  # the hook runs on real tensors only

    class ChecksItsInput(nn.Module):  # control flow on the input: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.net = create_model("cifar_resnet20")

        def forward(self, x):
            if x.shape[1] != 3:
                raise ValueError("expected RGB")
            return self.net(x)

    guarded = ChecksItsInput()
    assert for_inference(guarded, cpu) is guarded
    x = make_input(guarded.net)
    with torch.no_grad():
        hooked(x)
    assert len(seen) == 1


# --- features_only through create_model ---------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "cifar_resnet20", "res2net50d"])
def test_create_model_features_only(name, make_input):
    backbone = create_model(name, features_only=True).eval()
    assert isinstance(backbone, FeatureExtractor)
    assert not any(n.startswith("fc.") for n in backbone.state_dict())
    x = make_input(backbone)
    with torch.no_grad():
        feats = backbone(x)
    assert [f.shape[1] for f in feats] == [info["num_chs"] for info in backbone.feature_info]
    assert [x.shape[-1] // f.shape[-1] for f in feats] == [info["reduction"] for info in backbone.feature_info]


def test_out_indices_selects_levels_and_drops_unused_stages(make_input, assert_close):
    full = create_model("resnet50", features_only=True).eval()
    part = create_model("resnet50", features_only=True, out_indices=(1, 3)).eval()
    full_state = full.state_dict()
    part.load_state_dict({k: full_state[k] for k in part.state_dict()})  # a strict subset: same weights
    assert [info["reduction"] for info in part.feature_info] == [4, 16]
    assert [info["num_chs"] for info in part.feature_info] == [256, 1024]
    assert not hasattr(part, "layer4")  # nothing is computed past the last level asked for
    x = make_input(part)
    with torch.no_grad():
        all_feats, feats = full(x), part(x)
    assert len(feats) == 2
    assert_close(feats[0], all_feats[1])
    assert_close(feats[1], all_feats[3])

    last = create_model("resnet18", features_only=True, out_indices=(-1,))
    assert [info["reduction"] for info in last.feature_info] == [32]
    assert last(make_input(last))[0].shape == (2, 512, 2, 2)


# --- architecture options on an ImageNet-style model ---------------------------------------------

def test_in_chans_1():
    model = create_model("resnet18", in_chans=1).eval()
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert model.pretrained_cfg["input_size"] == (1, 224, 224)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 1000)
    deep = create_model("resnet50", in_chans=1, stem="deep")
    assert deep.conv1[0].weight.shape[1] == 1


def test_deep_stem():
    model = create_model("resnet50", stem="deep", stem_width=32).eval()
    convs = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(32, 3, 3, 3), (32, 32, 3, 3), (64, 32, 3, 3)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
    assert model.feature_info[0] == dict(num_chs=64, reduction=2, module="act1")
    feats = FeatureExtractor(model)(torch.randn(2, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    assert create_model("resnet50", stem="deep").bn1.num_features == 128  # default stem_width 64


def test_avg_down_shortcuts():
    plain, model = create_model("resnet50"), create_model("resnet50", avg_down=True).eval()
    # ResNet-D only moves the stride from the 1x1 conv to an average pool: same parameters.
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())
    assert isinstance(model.layer1[0].downsample[0], nn.Identity)  # stride 1: nothing to average
    for stage in (model.layer2, model.layer3, model.layer4):
        pool, conv = stage[0].downsample[0], stage[0].downsample[1]
        assert isinstance(pool, nn.AvgPool2d) and pool.stride == 2
        assert conv.stride == (1, 1)
    with torch.no_grad():
        assert model.forward_features(torch.randn(2, 3, 64, 64)).shape == (2, 2048, 2, 2)


@pytest.mark.parametrize("output_stride, reductions, dilation", [
    (16, [2, 4, 8, 16, 16], 2),
    (8, [2, 4, 8, 8, 8], 4),
])
def test_output_stride(output_stride, reductions, dilation):
    model = create_model("resnet50", output_stride=output_stride).eval()
    assert [info["reduction"] for info in model.feature_info] == reductions
    assert model.layer4[1].conv2.dilation == (dilation, dilation)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # dilation adds no parameters
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = FeatureExtractor(model)(x)
        assert [64 // f.shape[-1] for f in feats] == reductions
        assert model.forward_features(x).shape == (2, 2048, 64 // output_stride, 64 // output_stride)
        assert model(x).shape == (2, 1000)


def test_drop_path(randomize_bn, assert_close):
    model = create_model("resnet18", drop_path_rate=0.2)
    rates = [b.drop_path.p if isinstance(b.drop_path, DropPath) else 0.0
             for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    assert rates == pytest.approx([0.2 * i / 7 for i in range(8)])  # linear up to the rate at the last block
    # Random BN: with zero_init_last every residual branch is 0 and dropping it would change nothing.
    randomize_bn(model)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        model.train()
        a, b = model(x), model(x)
        assert not torch.allclose(a, b), "drop path in train mode should be stochastic"
        model.eval()
        c, d = model(x), model(x)
        assert torch.equal(c, d)
        reference = create_model("resnet18", drop_path_rate=0.0).eval()
        reference.load_state_dict(model.state_dict())
        assert_close(c, reference(x))  # eval mode keeps every branch, unscaled


@pytest.mark.parametrize("kind", ["max", "avgmax", "catavgmax"])
def test_global_pool(kind, randomize_bn, assert_close):
    model = randomize_bn(create_model("resnet18", global_pool=kind)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        avg, mx = feats.mean((2, 3)), feats.amax((2, 3))
        expected = {"max": mx, "avgmax": 0.5 * (avg + mx), "catavgmax": torch.cat([avg, mx], 1)}[kind]
        assert_close(pre, expected)
        assert model.get_classifier().in_features == expected.shape[1]
        assert model(x).shape == (2, 1000)
        model.reset_classifier(0)
        assert model(x).shape == expected.shape


@pytest.mark.parametrize("cardinality, base_width", [(32, 4), (8, 16)])
def test_cardinality_and_base_width_set_group_widths(cardinality, base_width):
    model = create_model("resnet50", cardinality=cardinality, base_width=base_width)
    for i, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        width = cardinality * base_width * 2 ** i  # C x d, doubling per stage
        for block in stage:
            assert block.conv1.out_channels == width
            assert block.conv2.groups == cardinality
            assert block.conv2.in_channels == block.conv2.out_channels == width
            assert block.conv3.out_channels == 256 * 2 ** i
    if (cardinality, base_width) == (32, 4):
        named = create_model("resnext50_32x4d")
        assert {k: v.shape for k, v in model.state_dict().items()} == \
               {k: v.shape for k, v in named.state_dict().items()}


# --- CIFAR constructors -------------------------------------------------------------------------

def _weight_layers(model: nn.Module) -> int:
    """Depth as the papers count it: convs and fc on the main path (projection shortcuts excluded)."""
    return sum(1 for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and ".downsample." not in name)


def test_cifar_resnext_any_depth():
    model = cifar_resnext(depth=38, cardinality=2, base_width=8, num_classes=100).eval()
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [4, 4, 4]
    assert _weight_layers(model) == 38
    assert model.layer1[0].conv2.groups == 2 and model.layer1[0].conv2.out_channels == 16
    assert model.num_features == 1024  # 256 x widen factor 4
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_cifar_resnet_depths(depth):
    model = cifar_resnet(depth)
    assert _weight_layers(model) == depth
    assert all(len(s) == (depth - 2) // 6 for s in (model.layer1, model.layer2, model.layer3))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_constructors_take_overrides():
    model = cifar_resnet(20, num_classes=100, drop_path_rate=0.1)
    assert model.num_classes == 100 and model.cfg.drop_path_rate == 0.1
    with pytest.raises(ConfigError, match="unknown argument"):
        cifar_resnext(29, widht=4)


@pytest.mark.parametrize("constructor, depth, rule", [
    (cifar_resnext, 30, "(depth - 2) % 9"),
    (cifar_resnext, 2, "(depth - 2) % 9"),
    (cifar_resnet, 21, "(depth - 2) % 6"),
    (cifar_resnet, 2, "(depth - 2) % 6"),
])
def test_cifar_invalid_depth(constructor, depth, rule):
    with pytest.raises(ConfigError) as err:
        constructor(depth=depth)
    message = str(err.value)
    assert rule in message and f"got {depth}" in message
