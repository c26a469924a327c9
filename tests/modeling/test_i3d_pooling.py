"""I3D's max pools keep the input's dtype under CPU autocast (which would run them in float32)."""

from __future__ import annotations

import torch

from fima.modeling.backbone.i3d import MaxPool3d


def test_pooling_stays_in_bf16_and_is_exact() -> None:
    pool = MaxPool3d(3, stride=1, padding=1)
    x = torch.randn(2, 4, 3, 5, 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = pool(x)
        reference = torch.nn.MaxPool3d(3, stride=1, padding=1)(x)
    assert y.dtype == torch.bfloat16 and reference.dtype == torch.float32
    assert torch.equal(y.float(), reference)


def test_pooling_runs_on_the_meta_device() -> None:
    with torch.device("meta"):
        assert MaxPool3d(2, stride=2)(torch.empty(1, 2, 4, 4, 4)).shape == (1, 2, 2, 2, 2)
