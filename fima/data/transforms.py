"""Clip transforms: crops with boxes and flips on the CPU, batched video augmentation on the device.

Decoding (``fima.data.decoder``) first rescales frames whose short side is larger than
``INPUT.TRAIN_SHORT_SIDE`` / ``INPUT.TEST_SHORT_SIDE`` (:func:`short_side_size`), in the same
swscale call that converts them to RGB.

CPU side (per view, per sample): ``RandomResizedCrop`` that also returns the crop box in the
source frame, normalised as RECIPE.md §1 says, then a horizontal flip that swaps ``x1`` and
``x2``; or, for testing, a centre crop. Clips stay uint8 until the device, and are resized as
uint8 (torch's integer antialiased bilinear path, ~8x faster than going through float).

Device side (per batch): :class:`VideoAugmentation`, kornia's video augmentation (fused for whole
clips in ``fima.data.fast_augment``) with one draw of parameters per clip shared by all its
frames, then normalisation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fima.config.config import CfgNode
from fima.data.fast_augment import ClipAugmentation


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """The size a frame is rescaled to so that its short side is ``short_side``.

    Only downscales: a frame whose short side is already at most ``short_side`` (or
    ``short_side <= 0``) keeps its size. The aspect ratio is kept, to the nearest pixel.

    Args:
        height, width: the frame's size.
        short_side: the wanted short side; <= 0 for no rescaling.

    Returns:
        ``(height, width)``, each at least 1.
    """
    short = min(height, width)
    if short_side <= 0 or short <= short_side:
        return height, width
    scale = short_side / short
    return max(int(round(height * scale)), 1), max(int(round(width * scale)), 1)


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop sampling of a region of the frame.

    Ten tries at a random area fraction in ``scale`` and aspect ratio in ``ratio`` (log-uniform);
    if none fits, a centre crop with the aspect ratio clamped to ``ratio``.

    Args:
        height, width: the frame's size.
        scale: ``(min, max)`` area fraction.
        ratio: ``(min, max)`` aspect ratio ``w / h``.
        rng: the sample's generator.

    Returns:
        ``(top, left, h, w)`` in pixels, inside the frame.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_box(top: int, left: int, h: int, w: int, height: int, width: int) -> torch.Tensor:
    """The crop's box in the source frame, in the normalised coordinates of RECIPE.md §1.

    Args:
        top, left, h, w: the crop region in pixels.
        height, width: the frame's size.

    Returns:
        ``[4]`` float32 ``(x1, y1, x2, y2)``: the first and last pixel indices of the crop
        divided by ``(W - 1, H - 1)``.
    """
    sx, sy = max(width - 1, 1), max(height - 1, 1)
    return torch.tensor(
        [left / sx, top / sy, (left + w - 1) / sx, (top + h - 1) / sy], dtype=torch.float32
    )


def resized_crop(
    frames: torch.Tensor, top: int, left: int, h: int, w: int, size: int
) -> torch.Tensor:
    """Crop a region of every frame and resize it to a square.

    Bilinear with antialiasing, computed on uint8 (a channels-last view, torch's fast path).

    Args:
        frames: ``[T, H, W, 3]`` uint8.
        top, left, h, w: the region in pixels.
        size: the output side ``S``.

    Returns:
        ``[3, T, S, S]`` uint8, contiguous.
    """
    region = frames[:, top : top + h, left : left + w].permute(0, 3, 1, 2)
    if (h, w) != (size, size):
        region = F.interpolate(
            region, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return region.permute(1, 0, 2, 3).contiguous()


def random_crop_flip(
    frames: torch.Tensor, cfg: CfgNode, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """RandomResizedCrop + horizontal flip of one view.

    Args:
        frames: ``[T, H, W, 3]`` uint8.
        cfg: uses ``INPUT.CROP_SIZE``, ``CROP_SCALE``, ``CROP_RATIO``, ``FLIP_PROB``.
        rng: the sample's generator.

    Returns:
        The clip ``[3, T, S, S]`` uint8 and its box ``[4]`` (``x1 > x2`` when flipped).
    """
    height, width = frames.shape[1], frames.shape[2]
    top, left, h, w = random_resized_crop_params(
        height, width, tuple(cfg.INPUT.CROP_SCALE), tuple(cfg.INPUT.CROP_RATIO), rng
    )
    clip = resized_crop(frames, top, left, h, w, cfg.INPUT.CROP_SIZE)
    box = crop_box(top, left, h, w, height, width)
    if rng.random() < cfg.INPUT.FLIP_PROB:
        clip = clip.flip(-1)
        box = box[[2, 1, 0, 3]]
    return clip, box


def spatial_crops(frames: torch.Tensor, cfg: CfgNode, num_crops: int = 1) -> torch.Tensor:
    """Test-time views: squares of side ``TEST_CROP_FRACTION * short side``, resized to
    ``CROP_SIZE``. With the short side at ``TEST_SHORT_SIDE`` (the test loader decodes larger
    frames to it) the centre one is RECIPE.md §9's 256 x 0.875 crop; on smaller frames it takes
    the same region, so no upscaling pass is needed before the crop.

    Args:
        frames: ``[T, H, W, 3]`` uint8.
        cfg: uses ``INPUT.CROP_SIZE`` and ``INPUT.TEST_CROP_FRACTION``.
        num_crops: 1, the centre square; 3, the squares at the start, centre and end of the long
            side, centred across the short side (SlowFast's three-crop test).

    Returns:
        ``[num_crops, 3, T, S, S]`` uint8.
    """
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    height, width = frames.shape[1], frames.shape[2]
    side = max(int(round(min(height, width) * cfg.INPUT.TEST_CROP_FRACTION)), 1)
    top, left = (height - side) // 2, (width - side) // 2
    if num_crops == 1:
        corners = [(top, left)]
    elif width >= height:
        corners = [(top, 0), (top, left), (top, width - side)]
    else:
        corners = [(0, left), (top, left), (height - side, left)]
    return torch.stack(
        [resized_crop(frames, y, x, side, side, cfg.INPUT.CROP_SIZE) for y, x in corners]
    )


def blur_kernel_size(cfg: CfgNode) -> int:
    """The Gaussian blur's kernel side.

    Args:
        cfg: uses ``INPUT.AUG.BLUR_KERNEL_FRACTION`` and ``INPUT.CROP_SIZE``.

    Returns:
        ``round(BLUR_KERNEL_FRACTION * CROP_SIZE)``, made odd by adding 1 to an even value, and
        at least 3.
    """
    size = int(round(cfg.INPUT.AUG.BLUR_KERNEL_FRACTION * cfg.INPUT.CROP_SIZE))
    return max(size + (1 - size % 2), 3)


class VideoAugmentation(nn.Module):
    """Device-side augmentation of a clip batch (RECIPE.md §2.2), one parameter draw per clip.

    RandomGrayscale, ColorJitter, GaussianBlur (kornia's maths, the same parameters on every frame
    of a clip), then normalisation with ``INPUT.MEAN`` / ``INPUT.STD``. Draws use the torch
    RNG of the input's device (the CPU's for the order of the jitter steps), which checkpoints
    save, so a resumed run continues the same augmentation stream.
    """

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        aug = cfg.INPUT.AUG
        sigma = tuple(aug.BLUR_SIGMA)
        if not aug.BLUR_SIGMA_PER_CLIP:
            # The reference draws one sigma when the model is built and keeps it for the run.
            fixed = float(
                np.random.default_rng(cfg.SEED if cfg.SEED >= 0 else None).uniform(*sigma)
            )
            sigma = (fixed, fixed)
        # kornia's RandomGrayscale, ColorJitter and RandomGaussianBlur with same_on_frame, fused
        # for whole clips (fima.data.fast_augment: the same maths, several times faster on CPUs).
        self.augment = ClipAugmentation(
            aug.GRAYSCALE_PROB,
            tuple(aug.COLOR_JITTER),
            aug.COLOR_JITTER_PROB,
            blur_kernel_size(cfg),
            sigma,
            aug.BLUR_PROB,
        )
        self.register_buffer("mean", torch.tensor(cfg.INPUT.MEAN).view(1, 3, 1, 1, 1), False)
        self.register_buffer("std", torch.tensor(cfg.INPUT.STD).view(1, 3, 1, 1, 1), False)
        # The encoders' layout (MODEL.CHANNELS_LAST): both outputs are written in it directly.
        self.memory_format = (
            torch.channels_last_3d if cfg.MODEL.CHANNELS_LAST else torch.contiguous_format
        )

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Augment and normalise a batch of clips, in float32 also under autocast (a method
        calls this inside its forward, which the trainer autocasts).

        The augmentation's copy of the clips is laid out for the encoders and normalised in
        place: three fewer full-size allocations per call than augmenting, normalising and
        converting one after the other (for the 24 difference clips of an I3D FIMA step at
        16x112², 58 MB each, whose first writes fault every page in).

        Args:
            clips: ``[N, 3, T, H, W]`` float in [0, 1] (left unchanged).

        Returns:
            A new ``[N, 3, T, H, W]`` float32 tensor in the encoders' layout.
        """
        # Autocast would compute some steps (grayscale, blur) in bf16/fp16, which the in-place
        # writes into the float32 copy refuse; the pixel maths is cheap and wants float32 anyway.
        with torch.autocast(clips.device.type, enabled=False):
            out = self.augment(clips, memory_format=self.memory_format)
            return out.sub_(self.mean).div_(self.std)

    def normalize(self, clips: torch.Tensor) -> torch.Tensor:
        """Only the normalisation (evaluation inputs).

        Args:
            clips: ``[N, 3, T, H, W]`` float in [0, 1].

        Returns:
            A new ``[N, 3, T, H, W]`` tensor in the encoders' layout.
        """
        out = torch.empty_like(clips, memory_format=self.memory_format)
        return torch.sub(clips, self.mean, out=out).div_(self.std)
