"""S3D: Inception-v1 with separable 3-D convolutions (Xie et al., ECCV 2018), a fima backbone."""

from __future__ import annotations

import math

import torch
from torch import nn

from fima.config import CfgNode
from fima.config.config import CfgNode as CN
from fima.modeling import BACKBONE_REGISTRY, Backbone

# S3D keeps Inception-v1's layout and widths: the blocks and the width table fima's I3D builds from.
from fima.modeling.backbone.i3d import MIXED_BLOCKS as INCEPTION_WIDTHS
from fima.modeling.backbone.i3d import InceptionBlock, SamePool3d, Unit3D


def add_s3d_config(cfg: CfgNode) -> None:
    """``MODEL.S3D``: the width of :class:`S3D`."""
    cfg.MODEL.S3D = CN()
    # Every layer's channels are scaled by WIDTH_MULT (rounded, at least 1): 1.0 is the paper's
    # network (1024 output channels); the quick configs use 0.125 to train on a CPU in seconds.
    cfg.MODEL.S3D.WIDTH_MULT = 1.0


class SepUnit3D(nn.Sequential):
    """A ``k x k x k`` convolution factorised as ``1 x k x k`` (space) then ``k x 1 x 1`` (time),
    each with BatchNorm and ReLU (S3D's "separable" convolution)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.spatial = Unit3D(in_channels, out_channels, (1, kernel, kernel), (1, stride, stride))
        self.temporal = Unit3D(out_channels, out_channels, (kernel, 1, 1), (stride, 1, 1))


class SepInceptionBlock(InceptionBlock):
    """I3D's Inception block with its two ``3 x 3 x 3`` convolutions made separable."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__(in_channels, widths)
        _, w1a, w1b, w2a, w2b, _ = widths
        self.b1b = SepUnit3D(w1a, w1b, 3)
        self.b2b = SepUnit3D(w2a, w2b, 3)


def _scale(width: int, mult: float) -> int:
    return max(1, round(width * mult))


@BACKBONE_REGISTRY.register()
class S3D(Backbone):
    """S3D up to ``Mixed_5c``: 1024 channels (at ``WIDTH_MULT`` 1), time /8, space /32.

    I3D's layout with every ``k x k x k`` convolution (the stem's 7, ``Conv_2c``'s and the
    Inception blocks' 3) replaced by :class:`SepUnit3D`; no feature gating (that is S3D-G).
    7,910,048 parameters at width 1, as torchvision's ``s3d`` without its classifier. Its
    layers are fima's I3D units (TensorFlow 'SAME' padding), so pretrained I3D code paths and
    inputs carry over: 16x224x224 -> 2x7x7, 16x112x112 -> 2x4x4.
    """

    temporal_stride = 8
    spatial_stride = 32

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        mult = cfg.MODEL.S3D.WIDTH_MULT
        stem, conv_2c = _scale(64, mult), _scale(192, mult)
        self.conv_1a = SepUnit3D(3, stem, 7, stride=2)
        self.pool_2a = SamePool3d((1, 3, 3), (1, 2, 2))
        self.conv_2b = Unit3D(stem, stem)
        self.conv_2c = SepUnit3D(stem, conv_2c, 3)
        self.pool_3a = SamePool3d((1, 3, 3), (1, 2, 2))
        in_channels = conv_2c
        for name, widths in INCEPTION_WIDTHS:
            if name == "mixed_4b":
                self.pool_4a = SamePool3d((3, 3, 3), (2, 2, 2))
            elif name == "mixed_5b":
                self.pool_5a = SamePool3d((2, 2, 2), (2, 2, 2))
            block = SepInceptionBlock(in_channels, tuple(_scale(w, mult) for w in widths))
            self.add_module(name, block)
            in_channels = block.out_channels
        self.out_channels = in_channels
        self._layers = [n for n, _ in self.named_children()]

    @classmethod
    def validate_config(cls, cfg: CfgNode, world_size: int) -> None:
        """``MODEL.S3D.WIDTH_MULT`` must be positive and finite; raises ``ConfigError`` naming
        the key."""
        from fima.config.validation import require

        mult = cfg.MODEL.S3D.WIDTH_MULT
        require(
            0 < mult < math.inf, "MODEL.S3D.WIDTH_MULT", f"must be positive and finite, got {mult}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` -> ``[B, C, T/8, H/32, W/32]`` (for sizes that divide by them)."""
        for name in self._layers:
            x = getattr(self, name)(x)
        return x
