"""Backbones: exact parameter counts, feature-map shapes and strides, registry contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fima.modeling import BACKBONE_REGISTRY, Backbone, build_backbone
from tests.conftest import tiny_cfg


@pytest.mark.parametrize(
    ("name", "params", "channels"),
    [("I3D", 12_287_264, 1024), ("R2Plus1D18", 31_300_125, 512), ("R3D18", 33_166_272, 512)],
)
def test_parameter_counts_are_exact(name: str, params: int, channels: int) -> None:
    backbone = build_backbone(tiny_cfg(**{"MODEL.BACKBONE.NAME": name}))
    assert sum(p.numel() for p in backbone.parameters()) == params
    assert backbone.out_channels == channels


@pytest.mark.parametrize(
    ("name", "frames", "size", "out_shape"),
    [
        ("I3D", 16, 64, (1024, 2, 2, 2)),
        ("R2Plus1D18", 16, 64, (512, 2, 4, 4)),
        ("R3D18", 8, 32, (512, 1, 2, 2)),
        ("Tiny3D", 8, 32, (32, 2, 2, 2)),
    ],
)
def test_feature_map_shapes(name: str, frames: int, size: int, out_shape: tuple) -> None:
    cfg = tiny_cfg(**{"MODEL.BACKBONE.NAME": name})
    backbone = build_backbone(cfg).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, frames, size, size))
    assert tuple(out.shape[1:]) == out_shape
    temporal, spatial = type(backbone).output_strides(cfg)
    assert out.shape[2] == -(-frames // temporal)
    assert out.shape[3] == -(-size // spatial)


def test_i3d_recipe_resolution_gives_2x7x7() -> None:
    backbone = build_backbone(tiny_cfg(**{"MODEL.BACKBONE.NAME": "I3D"})).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 16, 224, 224))
    assert tuple(out.shape) == (1, 1024, 2, 7, 7)


def _tf_same(x: torch.Tensor, kernel: tuple, stride: tuple) -> torch.Tensor:
    """TensorFlow's 'SAME' rule restated: total padding (ceil(n/s) - 1) * s + k - n, the odd
    pixel at the end."""
    pads = []
    for n, k, s in reversed(list(zip(x.shape[-3:], kernel, stride))):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return torch.nn.functional.pad(x, pads)


@pytest.mark.parametrize("size", [(9, 13, 13), (16, 15, 17), (7, 112, 113), (8, 56, 57), (2, 7, 8)])
def test_i3d_pads_like_tensorflow_same_for_any_size(size: tuple) -> None:
    from fima.modeling.backbone.i3d import SamePool3d, Unit3D

    torch.manual_seed(0)
    x = torch.rand(1, 3, *size)
    unit = Unit3D(3, 4, (7, 7, 7), (2, 2, 2)).eval()
    expected = torch.relu(
        unit.bn(
            torch.nn.functional.conv3d(_tf_same(x, (7,) * 3, (2,) * 3), unit.conv.weight, stride=2)
        )
    )
    assert torch.allclose(unit(x), expected, atol=1e-6)
    # The pools of I3D, on inputs >= 0 as after a ReLU.
    for kernel, stride in (((3,) * 3, (2,) * 3), ((1, 3, 3), (1, 2, 2)), ((2,) * 3, (2,) * 3)):
        pool = SamePool3d(kernel, stride)
        expected = torch.nn.functional.max_pool3d(_tf_same(x, kernel, stride), kernel, stride)
        assert torch.equal(pool(x), expected), (kernel, size)
    backbone = build_backbone(tiny_cfg(**{"MODEL.BACKBONE.NAME": "I3D"})).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, *size))
    assert tuple(out.shape[2:]) == tuple(-(-n // s) for n, s in zip(size, (8, 32, 32)))


@pytest.mark.parametrize(
    ("size", "same"), [((8, 32, 32), True), ((12, 48, 80), True), ((8, 40, 40), False)]
)
def test_i3d_matches_the_reference_padding_where_documented(
    monkeypatch, size: tuple, same: bool
) -> None:
    """The reference I3D pads by kernel and stride alone (ceil_mode pools): the same features as
    fima's 'SAME' rule when T divides by 4 and H, W by 16 (every strided 3-wide layer sees an even
    side), other features elsewhere (H = 40: Pool_4a sees 5 columns), as MODEL_ZOO.md says."""
    from fima.modeling.backbone import i3d

    torch.manual_seed(0)
    backbone = build_backbone(tiny_cfg(**{"MODEL.BACKBONE.NAME": "I3D"})).eval()
    for module in backbone.modules():
        if isinstance(module, nn.Conv3d):  # a signal that reaches the output
            nn.init.kaiming_normal_(module.weight)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        ours = backbone(x)

        def unit(self, x):
            x = nn.functional.pad(x, self.static)
            return torch.relu(self.bn(nn.functional.conv3d(x, self.conv.weight, None, self.stride)))

        def pool(self, x):
            x = nn.functional.pad(x, i3d.tf_same_padding(self.kernel, self.stride))
            return nn.functional.max_pool3d(x, self.kernel, self.stride, ceil_mode=True)

        monkeypatch.setattr(i3d.Unit3D, "forward", unit)
        monkeypatch.setattr(i3d.SamePool3d, "forward", pool)
        reference = backbone(x)
    assert reference.shape == ours.shape
    close = torch.allclose(ours, reference, rtol=1e-4, atol=1e-4 * ours.abs().max().item())
    assert close == same


def test_registered_user_backbone_is_built_and_unregistered() -> None:
    @BACKBONE_REGISTRY.register()
    class _TestOnlyBackbone(Backbone):
        out_channels = 7

        def __init__(self, cfg) -> None:
            super().__init__()
            self.conv = nn.Conv3d(3, 7, 1)

        def forward(self, x):
            return self.conv(x)

    try:
        backbone = build_backbone(tiny_cfg(**{"MODEL.BACKBONE.NAME": "_TestOnlyBackbone"}))
        assert backbone.out_channels == 7
    finally:
        BACKBONE_REGISTRY._obj_map.pop("_TestOnlyBackbone")


def test_backbone_without_out_channels_is_rejected() -> None:
    @BACKBONE_REGISTRY.register()
    class _NoChannels(nn.Module):
        def __init__(self, cfg) -> None:
            super().__init__()

    try:
        with pytest.raises(TypeError, match="out_channels"):
            build_backbone(tiny_cfg(**{"MODEL.BACKBONE.NAME": "_NoChannels"}))
    finally:
        BACKBONE_REGISTRY._obj_map.pop("_NoChannels")


def test_registries_document_their_contract() -> None:
    from fima.data import DATASET_REGISTRY
    from fima.modeling import HEAD_REGISTRY, SSL_METHOD_REGISTRY

    assert "[B, 3, T, H, W]" in BACKBONE_REGISTRY.__doc__
    assert "cls(cfg, in_channels)" in HEAD_REGISTRY.__doc__
    assert "dict[str, Tensor]" in SSL_METHOD_REGISTRY.__doc__
    assert "cls(cfg, split)" in DATASET_REGISTRY.__doc__
