"""Conv3d that pads time itself where the CPU's bfloat16 weight gradient would be wrong.

oneDNN 3.12 (torch 2.13's CPU build) computes wrong bfloat16 weight gradients in its
``jit_bf16:avx512_core_bf16`` backward-weights kernel, the one CPUs with AVX512-BF16 but no AMX
take (seen on a 2-core AMD EPYC, Zen 5), whenever a convolution pads time and its kernel is
deeper than the input is long: a 3x3x3 convolution with padding 1 on a clip of T=2 feature
frames (the last stage of Tiny3D at 8 frames, of R(2+1)D and I3D at 16) returned weight
gradients of up to 1e35, so training reached NaN within two steps. The forward pass and the
input gradients were correct, and so was every case with the temporal padding done by ``F.pad``
before a convolution that pads only space: the same maths, computed by another kernel path.

:func:`pad_time_explicitly` makes every plain ``nn.Conv3d`` of a module do that, but only where
it matters (a bfloat16 CPU computation, a kernel deeper than the input, temporal padding > 0);
every other call is the ordinary ``nn.Conv3d`` call, and the state dict does not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _bfloat16_on_cpu(x: torch.Tensor) -> bool:
    if x.device.type != "cpu":
        return False
    if x.dtype == torch.bfloat16:
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


class TemporallyPaddedConv3d(nn.Conv3d):
    """``nn.Conv3d`` whose temporal zero padding is an explicit ``F.pad`` where oneDNN's
    bfloat16 weight gradient would be wrong (see the module doc); same parameters, same
    results."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if isinstance(self.padding, str) or self.padding_mode != "zeros":
            return super()._conv_forward(input, weight, bias)
        depth_pad = self.padding[0]
        kernel_depth = (self.kernel_size[0] - 1) * self.dilation[0] + 1
        if depth_pad == 0 or input.shape[-3] >= kernel_depth or not _bfloat16_on_cpu(input):
            return super()._conv_forward(input, weight, bias)
        input = F.pad(input, (0, 0, 0, 0, depth_pad, depth_pad))
        return F.conv3d(
            input, weight, bias, self.stride, (0, *self.padding[1:]), self.dilation, self.groups
        )


def pad_time_explicitly(module: nn.Module) -> int:
    """Turn every plain ``nn.Conv3d`` in ``module`` into a :class:`TemporallyPaddedConv3d`, in
    place (parameters, buffers and state-dict keys unchanged); subclasses of ``nn.Conv3d`` are
    left as they are, since they may compute something else.

    Args:
        module: any module; changed in place.

    Returns:
        How many convolutions were turned.
    """
    turned = 0
    for sub in module.modules():
        if type(sub) is nn.Conv3d:
            sub.__class__ = TemporallyPaddedConv3d
            turned += 1
    return turned
