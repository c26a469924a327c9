"""Activation maps, masks and grids of fima.utils.visualization on hand-built inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fima.modeling import build_model
from fima.utils.visualization import (
    JET,
    ClipMaps,
    activation_map,
    colormap,
    compute_maps,
    dataset_clips,
    feature_encoders,
    is_fima_state,
    load_clip,
    mask_overlay,
    render_grid,
    side_by_side,
    to_pil,
    to_tensor,
)
from tests.conftest import tiny_cfg, write_test_video
from tests.modeling.test_fima import FIMA_TINY


class MotionEncoder(nn.Module):
    """A hand-built 'backbone': the pooled magnitude of frame-to-frame change, on a 4x4 grid."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        change = (x[:, :, 1:] - x[:, :, :-1]).abs()
        change = torch.cat([change[:, :, :1], change], dim=2)  # keep T frames
        return F.adaptive_avg_pool3d(change, (2, 4, 4)) + self.anchor


def moving_square_clips(frames: int = 8, size: int = 32) -> torch.Tensor:
    """``[1, 3, T, S, S]`` uint8: grey background, a white square moving right in the top-left
    quarter."""
    clip = torch.full((1, 3, frames, size, size), 100, dtype=torch.uint8)
    for t in range(frames):
        clip[:, :, t, 2:10, t : t + 8] = 255
    return clip


def test_activation_map_is_normalised_and_peaks_at_the_hot_cell() -> None:
    feat = torch.zeros(2, 4, 2, 4, 4)
    feat[0, :, 1, 3, 0] = 5.0  # second slice, bottom-left cell
    feat[1] = 3.0  # constant map
    heat = activation_map(feat, (8, 32, 32))
    assert heat.shape == (2, 8, 32, 32)
    assert heat[0].min() == 0 and heat[0].max() == 1
    t, rest = divmod(int(heat[0].argmax()), 32 * 32)
    y, x = divmod(rest, 32)
    assert t >= 4 and y >= 24 and x < 8  # the late frames' bottom-left corner
    assert heat[1].abs().max() == 0


def test_colormap_runs_from_dark_blue_to_dark_red() -> None:
    colours = colormap(torch.tensor([0.0, 0.5, 1.0]))
    assert colours.shape == (3, 3)
    assert torch.allclose(colours[0], torch.tensor([0.0, 0.0, 0.5]))
    assert torch.allclose(colours[2], torch.tensor([0.5, 0.0, 0.0]))
    assert colours[1, 1] > 0.9  # green-ish in the middle
    assert len(JET) == 256


def test_maps_of_a_motion_encoder_peak_on_the_moving_square_and_mask_half_the_cells() -> None:
    cfg = tiny_cfg()
    encoder = MotionEncoder()
    (maps,) = compute_maps(encoder, moving_square_clips(), cfg, mask_encoder=encoder)
    assert maps.frames.shape == (8, 3, 32, 32) and maps.difference.shape == (8, 3, 32, 32)
    assert maps.activation.shape == (8, 32, 32)
    mean_heat = maps.activation.mean(dim=0)
    assert mean_heat[:16, :16].mean() > 2 * mean_heat[16:, 16:].mean()
    assert maps.mask.shape == (4, 4)
    assert maps.mask.sum() <= 8  # at most half: ties at the median stay background
    assert maps.mask[0, :2].all()  # the square's cells
    assert not maps.mask[2:].any()


def test_mask_overlay_keeps_and_outlines_foreground_cells_and_darkens_the_rest() -> None:
    frames = torch.full((1, 3, 8, 8), 0.5)
    mask = torch.tensor([[True, False], [False, False]])
    out = mask_overlay(frames, mask)
    assert torch.equal(out[0, :, 2, 2], frames[0, :, 2, 2])  # inside a foreground cell
    assert out[0, 1, 0, 0] == 1.0 and out[0, 0, 0, 0] < 0.5  # green outline
    assert torch.allclose(out[0, :, 6, 6], frames[0, :, 6, 6] * 0.3)


def test_grid_has_a_row_per_map_and_a_column_per_frame() -> None:
    frames = torch.rand(8, 3, 16, 16)
    maps = ClipMaps(frames, torch.full_like(frames, 0.5), torch.rand(8, 16, 16))
    plain = render_grid(maps, columns=4, cell=20)
    with_mask = render_grid(
        ClipMaps(maps.frames, maps.difference, maps.activation, torch.ones(2, 2, dtype=bool)),
        columns=4,
        cell=20,
    )
    wide = render_grid(maps, columns=8, cell=20)
    assert with_mask.height - plain.height == 20 + 2  # one more row
    assert wide.width - plain.width == 4 * (20 + 2)  # four more columns
    pair = side_by_side([plain, with_mask], gap=10)
    assert pair.size == (plain.width + 10 + with_mask.width, with_mask.height)
    image = to_pil(torch.rand(3, 5, 7))
    assert isinstance(image, Image.Image) and image.size == (7, 5)
    assert torch.allclose(to_tensor(image), to_tensor(to_pil(to_tensor(image))))


def test_clips_come_from_the_test_view_deterministically(tmp_path) -> None:
    cfg = tiny_cfg(str(tmp_path))
    clip = load_clip(write_test_video(str(tmp_path / "v.mp4")), cfg)
    assert clip.shape == (3, 8, 32, 32) and clip.dtype == torch.uint8
    first = dataset_clips(cfg, cfg.DATA.TRAIN_SPLIT, 3)
    second = dataset_clips(cfg, cfg.DATA.TRAIN_SPLIT, 3)
    assert len(first) == 3 and len({path for path, _ in first}) == 3
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in zip(first, second))


def test_fima_draws_its_mask_from_the_key_encoder_and_moco_draws_none() -> None:
    fima_cfg = tiny_cfg(**FIMA_TINY)
    fima = build_model(fima_cfg)
    assert feature_encoders(fima) == (fima.encoder_q, fima.encoder_k)
    assert is_fima_state(fima.state_dict(), tiny_cfg())
    moco = build_model(tiny_cfg())
    assert feature_encoders(moco) == (moco.encoder_q, None)
    assert not is_fima_state(moco.state_dict(), fima_cfg)
    # A bare backbone follows the config.
    backbone = {k[len("encoder_q.") :]: v for k, v in moco.state_dict().items()}
    assert is_fima_state(backbone, fima_cfg) and not is_fima_state(backbone, tiny_cfg())
