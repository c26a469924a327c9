"""R(2+1)D-18 and R3D-18 (Tran et al., 2018) with torchvision's module layout.

State dicts of ``torchvision.models.video.r2plus1d_18`` / ``r3d_18`` (without ``fc``) load as is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fima.config.config import CfgNode
from fima.modeling.backbone.build import BACKBONE_REGISTRY, Backbone

Stride3d = tuple[int, int, int]
ConvBuilder = Callable[[int, int, int, Stride3d], nn.Module]


def conv3d_simple(in_planes: int, out_planes: int, mid_planes: int, stride: Stride3d) -> nn.Module:
    """A full 3x3x3 convolution, the :data:`ConvBuilder` of R3D-18 and Tiny3D.

    Args:
        in_planes, out_planes: input and output channels.
        mid_planes: unused, kept for the common builder signature.
        stride: ``(t, h, w)`` stride.

    Returns:
        A bias-free ``nn.Conv3d`` with padding 1 (each side ``n`` becomes ``ceil(n / stride)``).
    """
    del mid_planes
    return nn.Conv3d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv2plus1d(in_planes: int, out_planes: int, mid_planes: int, stride: Stride3d) -> nn.Module:
    """A 1x3x3 spatial then 3x1x1 temporal convolution with BN+ReLU between them.

    Args:
        in_planes, out_planes: input and output channels.
        mid_planes: channels between the spatial and the temporal convolution.
        stride: ``(t, h, w)`` stride; the spatial convolution takes ``h, w``, the temporal ``t``.

    Returns:
        An ``nn.Sequential`` (each side ``n`` becomes ``ceil(n / stride)``).
    """
    t_stride, h_stride, w_stride = stride
    return nn.Sequential(
        nn.Conv3d(
            in_planes,
            mid_planes,
            (1, 3, 3),
            stride=(1, h_stride, w_stride),
            padding=(0, 1, 1),
            bias=False,
        ),
        nn.BatchNorm3d(mid_planes),
        nn.ReLU(inplace=True),
        nn.Conv3d(
            mid_planes,
            out_planes,
            (3, 1, 1),
            stride=(t_stride, 1, 1),
            padding=(1, 0, 0),
            bias=False,
        ),
    )


def init_conv_bn(module: nn.Module) -> None:
    """Kaiming-normal convolutions and identity BatchNorm, as torchvision's video ResNets.

    Args:
        module: initialised in place, every ``nn.Conv3d`` and ``nn.BatchNorm3d`` below it.
    """
    for sub in module.modules():
        if isinstance(sub, nn.Conv3d):
            nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(sub, nn.BatchNorm3d):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


class BasicBlock(nn.Module):
    """Two convolutions with a residual connection (torchvision's ``BasicBlock``)."""

    def __init__(
        self, in_planes: int, planes: int, conv_builder: ConvBuilder, stride: Stride3d
    ) -> None:
        super().__init__()
        # torchvision sizes the (2+1)D middle width so that parameters match a full 3-D conv.
        mid_planes = (in_planes * planes * 27) // (in_planes * 9 + 3 * planes)
        self.conv1 = nn.Sequential(
            conv_builder(in_planes, planes, mid_planes, stride),
            nn.BatchNorm3d(planes),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(
            conv_builder(planes, planes, mid_planes, (1, 1, 1)), nn.BatchNorm3d(planes)
        )
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != (1, 1, 1) or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm3d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two convolutions plus the (downsampled) input.

        Args:
            x: ``[B, in_planes, T, H, W]``.

        Returns:
            ``[B, planes, ceil(T / st), ceil(H / sh), ceil(W / sw)]`` for stride
            ``(st, sh, sw)``.
        """
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + residual)


class VideoResNet18(Backbone):
    """ResNet-18 layout: a stem and four stages of two ``BasicBlock`` each (64..512 channels)."""

    out_channels = 512
    temporal_stride = 8
    spatial_stride = 16

    def __init__(self, stem: nn.Module, conv_builder: ConvBuilder) -> None:
        super().__init__()
        self.stem = stem
        in_planes = 64
        for index, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), 1):
            layer = nn.Sequential(
                BasicBlock(in_planes, planes, conv_builder, (stride,) * 3),
                BasicBlock(planes, planes, conv_builder, (1, 1, 1)),
            )
            self.add_module(f"layer{index}", layer)
            in_planes = planes
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute ``layer4``'s feature map.

        Args:
            x: ``[B, 3, T, H, W]`` normalised clips.

        Returns:
            ``[B, 512, ceil(T / 8), ceil(H / 16), ceil(W / 16)]``.
        """
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@BACKBONE_REGISTRY.register()
class R2Plus1D18(VideoResNet18):
    """R(2+1)D-18: 512 channels, time /8, space /16; 31,300,125 parameters."""

    def __init__(self, cfg: CfgNode | None = None) -> None:
        stem = nn.Sequential(
            nn.Conv3d(3, 45, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(45),
            nn.ReLU(inplace=True),
            nn.Conv3d(45, 64, (3, 1, 1), stride=1, padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(64),
            nn.ReLU(inplace=True),
        )
        super().__init__(stem, conv2plus1d)


@BACKBONE_REGISTRY.register()
class R3D18(VideoResNet18):
    """R3D-18 (full 3x3x3 convolutions): 512 channels, time /8, space /16; 33,166,272 parameters."""

    def __init__(self, cfg: CfgNode | None = None) -> None:
        stem = nn.Sequential(
            nn.Conv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(64),
            nn.ReLU(inplace=True),
        )
        super().__init__(stem, conv3d_simple)
