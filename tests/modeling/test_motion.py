"""frame_difference and foreground_grid_mask against a naive restatement of RECIPE.md §2.1, §5."""

from __future__ import annotations

import pytest
import torch

from fima.modeling.motion import foreground_grid_mask, frame_difference


def naive_frame_difference(clip: torch.Tensor) -> torch.Tensor:
    """RECIPE.md §2.1 frame by frame: d_t = (x_t - x_{t-1} + 1) / 2, x_{-1} = the last frame."""
    clip = clip.double()
    frames = clip.shape[2]
    out = torch.empty_like(clip)
    for t in range(frames):
        previous = clip[:, :, t - 1] if t > 0 else clip[:, :, frames - 1]
        out[:, :, t] = (clip[:, :, t] - previous + 1) / 2
    return out


def naive_foreground_mask(rgb: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """RECIPE.md §5 cell by cell, with the lower median taken from the sorted values."""
    batch, height, width = rgb.shape[0], rgb.shape[-2], rgb.shape[-1]
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    for b in range(batch):
        activation = {
            (y, x): rgb[b, :, :, y, x].double().mean().item()
            + diff[b, :, :, y, x].double().mean().item()
            for y in range(height)
            for x in range(width)
        }
        ordered = sorted(activation.values())
        median = ordered[(len(ordered) - 1) // 2]
        for (y, x), value in activation.items():
            mask[b, y, x] = value > median
    return mask


@pytest.mark.parametrize("frames", [1, 2, 5, 16])
def test_frame_difference_matches_recipe(frames: int) -> None:
    clip = torch.rand(2, 3, frames, 5, 6, generator=torch.Generator().manual_seed(frames))
    result = frame_difference(clip)
    assert result.shape == clip.shape and result.dtype == torch.float32
    torch.testing.assert_close(result.double(), naive_frame_difference(clip), rtol=1e-5, atol=1e-7)
    assert result.min() >= 0 and result.max() <= 1


def test_frame_difference_without_wrap_drops_the_first_frame() -> None:
    clip = torch.rand(2, 3, 6, 4, 4, generator=torch.Generator().manual_seed(1))
    result = frame_difference(clip, wrap=False)
    assert result.shape[2] == 5
    torch.testing.assert_close(
        result.double(), naive_frame_difference(clip)[:, :, 1:], rtol=1e-5, atol=1e-7
    )


def test_frame_difference_keeps_the_input_and_accepts_channels_last() -> None:
    clip = torch.rand(2, 3, 4, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    before = clip.clone()
    result = frame_difference(clip)
    assert torch.equal(clip, before)
    torch.testing.assert_close(result.double(), naive_frame_difference(clip), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("grid", "seed"), [((4, 4), 0), ((7, 7), 1), ((3, 5), 2), ((2, 2), 3)])
def test_foreground_mask_matches_recipe(grid: tuple[int, int], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.randn(3, 6, 2, *grid, generator=gen)
    diff = torch.randn(3, 5, 3, *grid, generator=gen)
    mask = foreground_grid_mask(rgb, diff)
    assert mask.shape == (3, *grid) and mask.dtype == torch.bool
    assert torch.equal(mask, naive_foreground_mask(rgb, diff))
    # Distinct values: exactly the cells above the lower median, floor(N / 2) of them.
    assert mask.flatten(1).sum(1).tolist() == [grid[0] * grid[1] // 2] * 3


def test_foreground_mask_of_constant_features_is_empty_and_bf16_works() -> None:
    assert not foreground_grid_mask(torch.ones(2, 4, 2, 3, 3), torch.ones(2, 4, 2, 3, 3)).any()
    rgb, diff = torch.randn(2, 4, 2, 3, 3), torch.randn(2, 4, 2, 3, 3)
    mask = foreground_grid_mask(rgb.bfloat16(), diff.bfloat16())
    assert torch.equal(mask, naive_foreground_mask(rgb.bfloat16().float(), diff.bfloat16().float()))


def test_foreground_mask_rejects_mismatched_grids() -> None:
    with pytest.raises(ValueError, match="same batch and grid"):
        foreground_grid_mask(torch.randn(2, 4, 2, 3, 3), torch.randn(2, 4, 2, 4, 4))
