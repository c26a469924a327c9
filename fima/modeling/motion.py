"""Motion cues for FIMA: frame differences of a clip and the foreground mask of a feature grid."""

from __future__ import annotations

import torch


def frame_difference(clip: torch.Tensor, *, wrap: bool = True) -> torch.Tensor:
    """Frame differences of an unnormalised clip, mapped back to [0, 1] (RECIPE.md §2.1).

    ``d = (x - roll(x, 1, dim=T) + 1) / 2``: frame ``t`` minus frame ``t - 1``, so frame 0 is
    differenced against the last frame (the reference's behaviour).

    Args:
        clip: ``[..., 3, T, H, W]`` float in [0, 1] (before normalisation), e.g.
            ``[B, 3, T, H, W]``.
        wrap: True (the reference): keep frame 0's difference against the last frame, ``T``
            frames out. False: drop that wrapped frame, ``T - 1`` frames out.

    Returns:
        ``[..., 3, T, H, W]`` (or ``T - 1`` frames without ``wrap``) float in [0, 1], a new tensor.
    """
    if not wrap:
        return (clip[..., 1:, :, :] - clip[..., :-1, :, :]).add_(1.0).mul_(0.5)
    diff = torch.empty_like(clip, memory_format=torch.contiguous_format)
    torch.sub(clip[..., 1:, :, :], clip[..., :-1, :, :], out=diff[..., 1:, :, :])
    torch.sub(clip[..., 0, :, :], clip[..., -1, :, :], out=diff[..., 0, :, :])
    return diff.add_(1.0).mul_(0.5)


def foreground_grid_mask(rgb_feat: torch.Tensor, diff_feat: torch.Tensor) -> torch.Tensor:
    """The cells of a feature grid whose activation is above the sample's median (RECIPE.md §5).

    ``A = mean_{C,T}(rgb_feat) + mean_{C,T}(diff_feat)``; a cell is foreground when
    ``A > median(A)`` over the sample's ``H * W`` cells, where the median is ``torch.median``'s
    (the lower of the two middle values for an even count). About half the cells are foreground;
    fewer when values tie at the median. Computed in float32.

    Args:
        rgb_feat: ``[B, C, T, H, W]`` key-encoder feature map of the RGB clip.
        diff_feat: ``[B, C', T'', H, W]`` key-encoder feature map of its frame difference (its
            channels and length may differ; the grid must match).

    Returns:
        ``[B, H, W]`` bool.
    """
    if rgb_feat.shape[0] != diff_feat.shape[0] or rgb_feat.shape[-2:] != diff_feat.shape[-2:]:
        raise ValueError(
            "foreground_grid_mask: the RGB and difference feature maps must have the same batch "
            f"and grid, got {tuple(rgb_feat.shape)} and {tuple(diff_feat.shape)}"
        )
    with torch.autocast(rgb_feat.device.type, enabled=False):
        activation = rgb_feat.float().mean(dim=(1, 2)) + diff_feat.float().mean(dim=(1, 2))
        flat = activation.flatten(1)
        median = flat.median(dim=1).values
        return (flat > median[:, None]).view_as(activation)
