"""projects/S3D: the backbone contract (shapes, strides, size); pretraining with MoCo and FIMA."""

from __future__ import annotations

import math
import os

import pytest
import torch

from fima.config import ConfigError, validate_cfg
from fima.modeling import build_backbone, build_model
from tests.conftest import random_batch, tiny_cfg
from tests.projects.common import import_project, read_metrics, run_project

s3d = import_project("S3D", "s3d")


def s3d_cfg(width_mult: float = 0.125, **overrides: object):
    cfg = tiny_cfg(**overrides)
    s3d.add_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "S3D"
    cfg.MODEL.S3D.WIDTH_MULT = width_mult
    return cfg


@pytest.mark.parametrize(("frames", "size"), [(16, 64), (8, 32), (16, 112)])
def test_feature_map_shape_follows_the_strides(frames: int, size: int) -> None:
    backbone = build_backbone(s3d_cfg()).eval()
    with torch.no_grad():
        out = backbone(torch.rand(2, 3, frames, size, size))
    t, s = backbone.temporal_stride, backbone.spatial_stride
    assert (t, s) == (8, 32)
    # TensorFlow 'SAME' padding: 112 px -> 3.5 -> 4 cells.
    assert out.shape == (
        2,
        backbone.out_channels,
        math.ceil(frames / t),
        math.ceil(size / s),
        math.ceil(size / s),
    )


def test_full_width_matches_torchvision_s3d_size_and_i3d_output() -> None:
    cfg = s3d_cfg(width_mult=1.0)
    with torch.device("meta"):
        backbone = build_backbone(cfg)
        out = backbone(torch.empty(1, 3, 16, 224, 224))
    # torchvision's s3d has 8,320,048 parameters, 410,000 of them in its 400-class classifier.
    assert sum(p.numel() for p in backbone.parameters()) == 8_320_048 - 410_000
    assert backbone.out_channels == 1024 and out.shape == (1, 1024, 2, 7, 7)
    # Separable: no convolution has a kernel that is large in both time and space.
    kernels = [m.kernel_size for m in backbone.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(k[0] == 1 or k[1:] == (1, 1) for k in kernels)
    assert (7, 1, 1) in kernels and (1, 7, 7) in kernels


def test_width_mult_scales_the_channels_and_is_validated() -> None:
    assert build_backbone(s3d_cfg(width_mult=0.25)).out_channels == 256
    for width_mult in (0.0, float("inf")):
        with pytest.raises(ConfigError, match=r"^MODEL\.S3D\.WIDTH_MULT: must be positive"):
            validate_cfg(s3d_cfg(width_mult=width_mult))


@pytest.mark.parametrize("method", ["MoCo", "FIMA"])
def test_moco_and_fima_train_a_step_with_s3d(method: str) -> None:
    cfg = s3d_cfg(**{"INPUT.NUM_FRAMES": 16, "INPUT.CROP_SIZE": 64})
    cfg.MODEL.META_ARCHITECTURE = method
    cfg.MODEL.FIMA.MOTION_QUEUE_SIZE = 64
    cfg.MODEL.FIMA.DENSE_QUEUE_SIZE = 0
    cfg.MODEL.MOTION_DECODER.DIM = cfg.MODEL.MOTION_DECODER.FFN_DIM = 32
    validate_cfg(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    losses = model(random_batch(cfg, local=method == "FIMA"))
    assert set(losses) == (
        {"loss_inst"} if method == "MoCo" else {"loss_inst", "loss_dense", "loss_local"}
    )
    sum(losses.values()).backward()
    grads = [p.grad for p in model.encoder_q.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "opts", "losses"),
    [
        ("moco_s3d_synthetic.yaml", (), {"loss_inst"}),
        (
            "fima_s3d_synthetic.yaml",
            ("INPUT.NUM_FRAMES", "16", "INPUT.CROP_SIZE", "64", "MODEL.MOTION_DECODER.DIM", "32"),
            {"loss_inst", "loss_dense", "loss_local"},
        ),
    ],
)
def test_quick_config_trains_end_to_end(tmp_path, config: str, opts: tuple, losses: set) -> None:
    out = str(tmp_path / "out")
    result = run_project("S3D", config, out, *opts)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_metrics(out)
    assert [row["iteration"] for row in rows] == [0, 1]
    assert all(losses <= set(row) and math.isfinite(row["total_loss"]) for row in rows)
    state = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    assert "encoder_q.mixed_5c.b1b.temporal.conv.weight" in state
    assert "NAME: S3D" in (tmp_path / "out" / "config.yaml").read_text()
