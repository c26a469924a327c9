"""A backbone of your own, registered from outside fima (see "Adding a new backbone" in README).

    python tools/train_net.py --import examples/my_backbone.py \
        --config-file configs/Quickstart/moco_synthetic.yaml MODEL.BACKBONE.NAME TwoLayer3D
"""

from __future__ import annotations

import torch
from torch import nn

from fima.config import CfgNode
from fima.config.config import CfgNode as CN
from fima.modeling import BACKBONE_REGISTRY, Backbone


def add_config(cfg: CfgNode) -> None:
    """Called by tools/train_net.py --import: this backbone's own keys."""
    cfg.MODEL.TWO_LAYER3D = CN()
    cfg.MODEL.TWO_LAYER3D.WIDTH = 32


@BACKBONE_REGISTRY.register()
class TwoLayer3D(Backbone):
    """Two strided 3-D convolutions: time /4, space /4."""

    temporal_stride = 4
    spatial_stride = 4

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        width = cfg.MODEL.TWO_LAYER3D.WIDTH
        self.layers = nn.Sequential(
            nn.Conv3d(3, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.Conv3d(width, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
        self.out_channels = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` -> ``[B, WIDTH, T/4, H/4, W/4]``."""
        return self.layers(x)
