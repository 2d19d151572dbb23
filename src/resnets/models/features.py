"""`features_only=True`: a backbone that returns every stage's output, for detection/segmentation heads."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


class FeatureExtractor(nn.Module):
    """`features_only=True`: the network without its head, returning the chosen stages' outputs.

    Holds the backbone's modules under their original names, so backbone weights load unchanged, and the
    network's metadata (arch_name, arch_args, pretrained_cfg).
    """

    def __init__(self, model: nn.Module, out_indices: tuple[int, ...] | None = None):
        super().__init__()
        n = len(model.feature_info)
        out_indices = tuple(range(n)) if out_indices is None else tuple(out_indices)
        bad = [i for i in out_indices if not -n <= i < n]
        if bad:
            raise ConfigError(f"out_indices {bad} out of range for {n} feature levels (0..{n - 1})")
        out_indices = tuple(i % n for i in out_indices)
        self.out_indices = out_indices
        self.feature_info = [model.feature_info[i] for i in out_indices]
        self._return = {model.feature_info[i]["module"] for i in out_indices}
        last = max(int(model.feature_info[i]["module"][5:]) if i else 0 for i in out_indices)
        keep = ["conv1", "bn1", "act1", "maxpool"] + [f"layer{k}" for k in range(1, last + 1)]
        for name in keep:
            self.add_module(name, getattr(model, name))
        self.arch_name, self.arch_args, self.pretrained_cfg = model.arch_name, model.arch_args, model.pretrained_cfg

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for name, module in self.named_children():
            x = module(x)
            if name in self._return:
                features.append(x)
        return features
