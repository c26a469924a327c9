"""The action-recognition head: global average pooling, dropout, one linear layer (RECIPE.md §9)."""

from __future__ import annotations

import torch
from torch import nn

from fima.config.config import CfgNode
from fima.modeling.heads.build import HEAD_REGISTRY


def global_pool(feat: torch.Tensor) -> torch.Tensor:
    """Average a feature map over time and space.

    Args:
        feat: ``[N, C, T, H, W]``.

    Returns:
        ``[N, C]`` in ``feat``'s dtype.
    """
    return feat.mean(dim=(2, 3, 4))


@HEAD_REGISTRY.register()
class LinearClassifier(nn.Module):
    """Pool the backbone's last feature map, dropout ``MODEL.CLASSIFIER.DROPOUT``, then a linear
    layer to ``MODEL.CLASSIFIER.NUM_CLASSES`` scores. The layer starts at N(0, 0.01) weights and
    zero bias, as in the reference's evaluation code."""

    HEAD_KIND = "classifier"

    def __init__(self, cfg: CfgNode, in_channels: int) -> None:
        super().__init__()
        num_classes = cfg.MODEL.CLASSIFIER.NUM_CLASSES
        if num_classes < 2:
            raise ValueError(f"MODEL.CLASSIFIER.NUM_CLASSES must be >= 2, got {num_classes}")
        self.dropout = nn.Dropout(cfg.MODEL.CLASSIFIER.DROPOUT)
        self.fc = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """Score a backbone feature map.

        Args:
            feat: ``[N, C, T, H, W]``.

        Returns:
            ``[N, NUM_CLASSES]`` float32 scores (logits).
        """
        return self.fc(self.dropout(global_pool(feat))).float()
