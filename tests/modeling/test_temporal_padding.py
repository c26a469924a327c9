"""Backbones train correctly under CPU bfloat16 where a kernel is deeper than its input is long.

oneDNN's bfloat16 backward-weights kernel on AVX512-BF16 CPUs without AMX returns wrong weight
gradients there (fima.modeling.backbone.temporal_padding); these tests compare the bfloat16
gradients with float32 ones, so they fail on such a CPU without the explicit temporal padding
and pass everywhere with it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fima.modeling import build_backbone
from fima.modeling.backbone.temporal_padding import TemporallyPaddedConv3d, pad_time_explicitly
from tests.conftest import tiny_cfg


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference).abs().max() / reference.abs().max())


def _gradients(conv: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, bf16: bool):
    conv.zero_grad()
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = conv(x)
    out.float().backward(grad_out)
    return out.detach().float(), x.grad, conv.weight.grad.clone()


@pytest.mark.parametrize(
    ("kernel", "padding", "frames", "stride"),
    [
        ((3, 3, 3), (1, 1, 1), 2, (1, 1, 1)),  # Tiny3D / R3D / I3D's last stage at T'=2
        ((3, 1, 1), (1, 0, 0), 2, (1, 1, 1)),  # R(2+1)D's temporal convolution
        ((5, 1, 1), (2, 0, 0), 4, (1, 2, 2)),
        ((3, 3, 3), (1, 1, 1), 4, (1, 1, 1)),  # deep enough: the plain call
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_bfloat16_gradients_match_float32(kernel, padding, frames, stride, channels_last) -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(32, 32, kernel, stride, padding, bias=False)
    assert pad_time_explicitly(conv) == 1 and type(conv) is TemporallyPaddedConv3d
    x = torch.randn(8, 32, frames, 4, 4)
    if channels_last:
        conv.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        grad_out = torch.randn_like(conv(x))
    out32, dx32, dw32 = _gradients(conv, x, grad_out, bf16=False)
    out16, dx16, dw16 = _gradients(conv, x, grad_out, bf16=True)
    # bfloat16 keeps 8 bits of mantissa: errors of ~0.4% of the largest value; the defect's
    # weight gradients were off by factors of 1 to 1e35.
    assert _relative_error(out16, out32) < 0.03
    assert _relative_error(dx16, dx32) < 0.03
    assert _relative_error(dw16, dw32) < 0.03


def test_float32_calls_are_the_plain_convolution() -> None:
    torch.manual_seed(0)
    plain = nn.Conv3d(4, 4, 3, padding=1)
    padded = nn.Conv3d(4, 4, 3, padding=1)
    padded.load_state_dict(plain.state_dict())
    pad_time_explicitly(padded)
    x = torch.randn(2, 4, 2, 5, 5)
    assert torch.equal(plain(x), padded(x))
    assert padded.state_dict().keys() == plain.state_dict().keys()


def test_every_backbone_convolution_is_turned_but_subclasses_are_left() -> None:
    class Custom(nn.Conv3d):
        pass

    module = nn.Sequential(nn.Conv3d(3, 4, 3), Custom(4, 4, 3), nn.Conv2d(4, 4, 1))
    assert pad_time_explicitly(module) == 1
    assert type(module[1]) is Custom and type(module[2]) is nn.Conv2d
    backbone = build_backbone(tiny_cfg())
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv3d)]
    assert convs and all(type(m) is TemporallyPaddedConv3d for m in convs)


def test_tiny3d_weight_gradients_in_bfloat16_match_float32() -> None:
    """The last stage of Tiny3D at 8 frames runs at T'=2: the case the defect hit."""
    torch.manual_seed(0)
    backbone = build_backbone(tiny_cfg(**{"MODEL.TINY3D.WIDTHS": (16, 32, 64, 128)}))
    x = torch.randn(16, 3, 8, 32, 32)
    grads = {}
    for bf16 in (False, True):
        backbone.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = backbone(x)
        out.float().square().mean().backward()
        grads[bf16] = {n: p.grad.clone() for n, p in backbone.named_parameters()}
    # Through a whole network bfloat16's rounding adds up (the stem's gradient differs by ~17%
    # of its largest value), so compare directions and sizes; the defect's were off by up to
    # 1e35.
    for name, reference in grads[False].items():
        value = grads[True][name].flatten()
        assert torch.isfinite(value).all(), name
        cosine = torch.nn.functional.cosine_similarity(value, reference.flatten(), dim=0)
        assert cosine > 0.95, (name, float(cosine))
        assert 0.8 < float(value.norm() / reference.norm()) < 1.25, name
