"""The projection head shared by the global and dense branches (RECIPE.md §3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fima.config.config import CfgNode
from fima.modeling.heads.build import HEAD_REGISTRY


@HEAD_REGISTRY.register()
class ProjectionHead(nn.Module):
    """Average over time, then 1x1 conv C->HIDDEN, ReLU, 1x1 conv HIDDEN->OUT, L2-normalise.

    Being 1x1 convolutions, it applies per spatial position: :meth:`forward` projects every cell
    of a feature map (dense embeddings), :meth:`embed` the globally pooled feature.
    """

    HEAD_KIND = "projector"

    def __init__(self, cfg: CfgNode, in_channels: int) -> None:
        super().__init__()
        hidden, out = cfg.MODEL.PROJECTOR.HIDDEN_DIM, cfg.MODEL.PROJECTOR.OUT_DIM
        self.fc1 = nn.Conv2d(in_channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, out, 1)
        self.out_dim = out

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Project every position of a 2-D feature map.

        Args:
            x: ``[N, C, H, W]``.

        Returns:
            ``[N, OUT, H, W]`` float32, L2-normalised over ``OUT``.
        """
        return F.normalize(self.fc2(self.relu(self.fc1(x))).float(), dim=1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """Dense embeddings: the time-averaged feature map, projected per cell.

        Args:
            feat: ``[N, C, T, H, W]``.

        Returns:
            ``[N, OUT, H, W]`` float32, L2-normalised over ``OUT``.
        """
        return self.project(feat.mean(dim=2))

    def embed(self, feat: torch.Tensor) -> torch.Tensor:
        """Global embedding: the feature map averaged over time and space, projected.

        Args:
            feat: ``[N, C, T, H, W]``.

        Returns:
            ``[N, OUT]`` float32, L2-normalised.
        """
        return self.project(feat.mean(dim=(2, 3, 4))[:, :, None, None]).flatten(1)
