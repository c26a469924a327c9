"""Tiny3D: a small 3-D ResNet for tests, quick starts and CPU benchmarks (well under 1M weights)."""

from __future__ import annotations

import math

import torch
from torch import nn

from fima.config.config import CfgNode
from fima.config.config import CfgNode as CN
from fima.modeling.backbone.build import BACKBONE_REGISTRY, Backbone
from fima.modeling.backbone.resnet3d import BasicBlock, conv3d_simple, init_conv_bn


def add_tiny3d_config(cfg: CfgNode) -> None:
    """Add ``MODEL.TINY3D``: stage widths and strides of :class:`Tiny3D`.

    Args:
        cfg: the config to extend, in place.
    """
    cfg.MODEL.TINY3D = CN()
    # Channels of the stem and of each stage; the last is out_channels.
    cfg.MODEL.TINY3D.WIDTHS = (16, 32, 64, 128)
    # Per stage (stem first): temporal and spatial strides. Defaults: time /4, space /16.
    cfg.MODEL.TINY3D.TEMPORAL_STRIDES = (1, 1, 2, 2)
    cfg.MODEL.TINY3D.SPATIAL_STRIDES = (2, 2, 2, 2)


@BACKBONE_REGISTRY.register()
class Tiny3D(Backbone):
    """A 3x3x3 stem and one residual block per further stage, sized by ``MODEL.TINY3D``."""

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        self.validate_config(cfg, world_size=1)
        widths = tuple(cfg.MODEL.TINY3D.WIDTHS)
        t_strides = tuple(cfg.MODEL.TINY3D.TEMPORAL_STRIDES)
        s_strides = tuple(cfg.MODEL.TINY3D.SPATIAL_STRIDES)
        self.stem = nn.Sequential(
            nn.Conv3d(
                3,
                widths[0],
                3,
                stride=(t_strides[0], s_strides[0], s_strides[0]),
                padding=1,
                bias=False,
            ),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.Sequential(
            *(
                BasicBlock(widths[i - 1], widths[i], conv3d_simple, (t, s, s))
                for i, (t, s) in enumerate(zip(t_strides, s_strides))
                if i > 0
            )
        )
        self.out_channels = widths[-1]
        self.temporal_stride, self.spatial_stride = self.output_strides(cfg)
        init_conv_bn(self)

    @classmethod
    def validate_config(cls, cfg: CfgNode, world_size: int) -> None:
        """Check one width and one positive stride of each kind per stage.

        Args:
            cfg: the finished config.
            world_size: processes of the run (unused: the backbone does not depend on it).

        Raises:
            ConfigError: naming the ``MODEL.TINY3D`` key that is wrong.
        """
        from fima.config.validation import require

        tiny = cfg.MODEL.TINY3D
        lengths = (len(tiny.WIDTHS), len(tiny.TEMPORAL_STRIDES), len(tiny.SPATIAL_STRIDES))
        require(
            lengths[0] == lengths[1] == lengths[2] >= 1,
            "MODEL.TINY3D.WIDTHS",
            "WIDTHS, TEMPORAL_STRIDES and SPATIAL_STRIDES need one value per stage (the same "
            f"length >= 1), got {lengths[0]}, {lengths[1]} and {lengths[2]} values",
        )
        for key in ("WIDTHS", "TEMPORAL_STRIDES", "SPATIAL_STRIDES"):
            require(
                all(v >= 1 for v in tiny[key]),
                f"MODEL.TINY3D.{key}",
                f"must be positive, got {tuple(tiny[key])}",
            )

    @classmethod
    def output_strides(cls, cfg: CfgNode) -> tuple[int, int]:
        """The products of ``MODEL.TINY3D``'s strides.

        Args:
            cfg: the finished config.

        Returns:
            ``(temporal_stride, spatial_stride)``.
        """
        return (
            math.prod(cfg.MODEL.TINY3D.TEMPORAL_STRIDES),
            math.prod(cfg.MODEL.TINY3D.SPATIAL_STRIDES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the last stage's feature map.

        Args:
            x: ``[B, 3, T, H, W]`` normalised clips.

        Returns:
            ``[B, WIDTHS[-1], T', H', W']``, each side ``n`` divided by the product of its
            strides, rounded up (``ceil(T / 4)``, ``ceil(H / 16)`` with the defaults).
        """
        return self.stages(self.stem(x))
