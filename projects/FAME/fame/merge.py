"""Foreground-background merging (FAME, Ding et al. CVPR 2022) on batches of pixel clips."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fima.modeling.motion import foreground_grid_mask, frame_difference


def motion_foreground_mask(clips: torch.Tensor, grid: int) -> torch.Tensor:
    """The cells of a ``grid x grid`` grid with the most motion: the clip's foreground.

    A cell's motion energy is the mean absolute frame difference inside it (all channels,
    adjacent frames, no wrap-around from the last frame to the first). The mask is FIMA's
    foreground rule (:func:`fima.modeling.motion.foreground_grid_mask`, RECIPE.md §5): the cells
    above the clip's median, about half of them. Cells tied at the median are background, so a
    clip without motion has an empty mask.

    Args:
        clips: ``[N, 3, T, H, W]`` float in [0, 1] (before normalisation), ``T >= 2``.
        grid: cells per side.

    Returns:
        ``[N, grid, grid]`` bool.
    """
    with torch.autocast(clips.device.type, enabled=False):
        energy = frame_difference(clips.float(), wrap=False).sub_(0.5).abs_().sum(1, keepdim=True)
        cells = F.adaptive_avg_pool3d(energy, (1, grid, grid))  # [N, 1, 1, grid, grid]
    # FIMA adds an appearance activation (the RGB feature map) to the motion one; on pixels
    # FAME's cue is motion alone, so that term is zero.
    return foreground_grid_mask(cells, torch.zeros_like(cells))


def background_sources(batch: int, windows: int, device: torch.device) -> torch.Tensor:
    """For each clip of a window-major batch ``[windows * batch]``, the index of the clip that
    lends it its background: the same window of another video, ``shift`` places earlier in the
    batch, with one ``shift`` drawn uniformly from ``1 .. batch - 1``.

    Args:
        batch: videos per window, at least 2.
        windows: windows per video (the batch holds window 0 of every video first).
        device: where the draw happens (its default generator) and the indices live.

    Returns:
        ``[windows * batch]`` int64; ``sources[i]`` is never ``i`` nor a clip of the same video.
    """
    if batch < 2:
        raise ValueError(f"FAME needs at least 2 videos per batch to merge, got {batch}")
    shift = torch.randint(1, batch, (), device=device)
    within = (torch.arange(batch, device=device) - shift) % batch
    offsets = torch.arange(windows, device=device)[:, None] * batch
    return (offsets + within).flatten()


def merge_foreground(
    clips: torch.Tensor, mask: torch.Tensor, sources: torch.Tensor
) -> torch.Tensor:
    """Paste each clip's foreground on the background of ``clips[sources]``.

    Args:
        clips: ``[N, C, T, H, W]``, any normalisation (the merge only selects pixels).
        mask: ``[N, h, w]`` bool foreground cells (``True`` keeps the clip's own pixels); scaled
            to ``H x W`` by nearest neighbour.
        sources: ``[N]`` int64, the clip that lends each clip its background, on every frame.

    Returns:
        ``[N, C, T, H, W]``: ``clips[i]`` where the mask is on, ``clips[sources[i]]`` elsewhere.
    """
    pixels = F.interpolate(mask[:, None].float(), size=clips.shape[-2:], mode="nearest")
    return torch.where(pixels[:, :, None].bool(), clips, clips[sources])
