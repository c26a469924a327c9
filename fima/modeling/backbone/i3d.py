"""I3D: Inception-v1 inflated to 3-D (Carreira & Zisserman, 2017), as used by FAME and FIMA."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fima.config.config import CfgNode
from fima.modeling.backbone.build import BACKBONE_REGISTRY, Backbone

# (output channels of branch 0, 1a, 1b, 2a, 2b, 3) of each Inception block, in order.
MIXED_BLOCKS: tuple[tuple[str, tuple[int, int, int, int, int, int]], ...] = (
    ("mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("mixed_5c", (384, 192, 384, 48, 128, 128)),
)


class MaxPool3d(nn.MaxPool3d):
    """Max pooling in the input's dtype. A maximum is exact in any precision, but CPU autocast
    runs ``max_pool3d`` in float32: two conversions of the whole activation per pool."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Max-pool in the input's dtype.

        Args:
            x: ``[B, C, T, H, W]``.

        Returns:
            ``[B, C, T', H', W']`` as ``nn.MaxPool3d`` sizes it, in ``x``'s dtype.
        """
        if not torch.amp.is_autocast_available(x.device.type):  # e.g. the meta device
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x)


def tf_same_padding(
    kernel: tuple[int, int, int],
    stride: tuple[int, int, int],
    size: tuple[int, int, int] | None = None,
) -> tuple[int, ...]:
    """TensorFlow 'SAME' padding as ``F.pad`` wants it: ``(w0, w1, h0, h1, t0, t1)``.

    Each side of length ``n`` becomes ``ceil(n / stride)``; odd padding puts the extra pixel at the
    end, as TensorFlow and the reference implementation do.

    Args:
        kernel, stride: ``(t, h, w)`` of the layer.
        size: ``(T, H, W)`` of the input; None means sides that the stride divides, for which the
            padding does not depend on the size (``max(k - s, 0)``).

    Returns:
        Six ints, ``(w0, w1, h0, h1, t0, t1)``: the leading and trailing padding of each side.
    """
    size = size or (0, 0, 0)
    pads: list[int] = []
    for k, s, n in reversed(list(zip(kernel, stride, size))):
        along = max(k - (n % s or s), 0)
        pads += [along // 2, along - along // 2]
    return tuple(pads)


class _SamePadding(nn.Module):
    """What a 'SAME' layer adds to its static padding when the stride does not divide a side:
    the padding grows there (never shrinks), and only then is the input padded again."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.static = tf_same_padding(kernel, stride)

    def extra(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, C, T, H, W]``, padded further where its size needs more than the static
        padding (the padded tensor, or ``x`` itself when it needs nothing)."""
        if all(s == 1 for s in self.stride):
            return x
        pads = tf_same_padding(self.kernel, self.stride, tuple(x.shape[-3:]))
        if pads == self.static:
            return x
        return F.pad(x, [p - q for p, q in zip(pads, self.static)])


class Unit3D(_SamePadding):
    """Conv3d (no bias) + BatchNorm3d + ReLU with TensorFlow 'SAME' padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
    ) -> None:
        super().__init__(kernel_size, stride)
        pads = self.static
        symmetric = all(pads[i] == pads[i + 1] for i in range(0, 6, 2))
        # Symmetric padding folds into the convolution; asymmetric needs an explicit pad.
        self.pad = None if symmetric else nn.ConstantPad3d(pads, 0.0)
        padding = (pads[4], pads[2], pads[0]) if symmetric else 0
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve, normalise and rectify.

        Args:
            x: ``[B, in_channels, T, H, W]``.

        Returns:
            ``[B, out_channels, ceil(T / st), ceil(H / sh), ceil(W / sw)]`` for stride
            ``(st, sh, sw)``.
        """
        x = self.extra(x)
        if self.pad is not None:
            x = self.pad(x)
        return torch.relu_(self.bn(self.conv(x)))


class SamePool3d(nn.Module):
    """Max pooling with TensorFlow 'SAME' padding, for inputs >= 0 (they follow a ReLU).

    TensorFlow pads with zeros, the odd pixel at the end. On inputs >= 0 a zero changes no
    window's maximum (every window holds a real value), so the pool pads the even part itself
    and lets ``ceil_mode`` run the last window past the end for the odd pixel: the same output,
    without a padded copy of the activation (for the 24 difference clips of an I3D FIMA step at
    16x112², that copy's fill and write were ~0.3 s of a 4.3-s float32 step).
    """

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Max-pool with 'SAME' padding.

        Args:
            x: ``[B, C, T, H, W]``, values >= 0.

        Returns:
            ``[B, C, ceil(T / st), ceil(H / sh), ceil(W / sw)]`` for stride ``(st, sh, sw)``, in
            ``x``'s dtype.
        """
        pads = tf_same_padding(self.kernel, self.stride, tuple(x.shape[-3:]))
        padding = (pads[4], pads[2], pads[0])  # the leading side of (t, h, w)
        if not torch.amp.is_autocast_available(x.device.type):  # e.g. the meta device
            return F.max_pool3d(x, self.kernel, self.stride, padding, ceil_mode=True)
        # In the input's dtype: CPU autocast would run max_pool3d in float32 (see MaxPool3d).
        with torch.autocast(x.device.type, enabled=False):
            return F.max_pool3d(x, self.kernel, self.stride, padding, ceil_mode=True)


class InceptionBlock(nn.Module):
    """Four parallel branches (1x1; 1x1-3x3; 1x1-3x3; pool-1x1) concatenated on channels."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3))
        # Symmetric 'SAME' padding; -inf and zero padding agree on post-ReLU inputs.
        self.b3a = MaxPool3d(3, stride=1, padding=1)
        self.b3b = Unit3D(in_channels, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the four branches and concatenate them on channels.

        Args:
            x: ``[B, in_channels, T, H, W]``.

        Returns:
            ``[B, out_channels, T, H, W]``.
        """
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))],
            dim=1,
        )


@BACKBONE_REGISTRY.register()
class I3D(Backbone):
    """Inception-v1 I3D up to ``Mixed_5c``: 1024 channels, time /8, space /32.

    12,287,264 parameters. Padding follows TensorFlow's 'SAME' rule (asymmetric where the kernel
    minus the stride is odd), so a side of ``n`` becomes ``ceil(n / stride)`` at every strided
    layer (16x224x224 -> 2x7x7, 16x112x112 -> 2x4x4). The FAME/FIMA reference pads by kernel and
    stride alone (its pools in ``ceil_mode``), which is the same padding whenever ``T`` divides by
    4 and ``H``, ``W`` by 16 (224, 112 and their 16-multiples; 8, 16, 32 frames): there converted
    reference weights compute the same features. On other sizes (e.g. a 100 or 120 crop, 10
    frames) a strided 3- or 7-wide layer sees an odd side and the two place their windows
    differently.
    """

    out_channels = 1024
    temporal_stride = 8
    spatial_stride = 32

    def __init__(self, cfg: CfgNode | None = None) -> None:
        super().__init__()
        self.conv_1a = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.pool_2a = SamePool3d((1, 3, 3), (1, 2, 2))
        self.conv_2b = Unit3D(64, 64)
        self.conv_2c = Unit3D(64, 192, (3, 3, 3))
        self.pool_3a = SamePool3d((1, 3, 3), (1, 2, 2))
        in_channels = 192
        for name, widths in MIXED_BLOCKS:
            if name == "mixed_4b":
                self.pool_4a = SamePool3d((3, 3, 3), (2, 2, 2))
            elif name == "mixed_5b":
                self.pool_5a = SamePool3d((2, 2, 2), (2, 2, 2))
            block = InceptionBlock(in_channels, widths)
            self.add_module(name, block)
            in_channels = block.out_channels
        self._layers = [n for n, _ in self.named_children()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute ``Mixed_5c``'s feature map.

        Args:
            x: ``[B, 3, T, H, W]`` normalised clips.

        Returns:
            ``[B, 1024, ceil(T / 8), ceil(H / 32), ceil(W / 32)]``.
        """
        for name in self._layers:
            x = getattr(self, name)(x)
        return x
