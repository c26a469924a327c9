"""Pictures of what a video model looks at: frames, frame differences, class-agnostic activation
maps and FIMA's foreground grid mask, drawn as PNG grids with Pillow (no plotting library).

A grid shows one clip: a column per (sampled) frame and the rows

- ``frames``: the centre-cropped test view of the clip;
- ``difference``: its frame difference (:func:`fima.modeling.motion.frame_difference`),
  amplified around "no change" (grey) so that small motions are visible;
- ``activation``: the class-agnostic activation map, the channel-mean of the encoder's last
  feature map, upsampled to the clip (trilinear, over time too) and min-max normalised over the
  clip, as a colour map over the frames;
- ``foreground mask`` (FIMA): the cells of RECIPE.md §5's mask, computed as FIMA does from the
  RGB and difference feature maps of its key encoder; background cells are darkened and
  foreground cells outlined.

``tools/visualize.py`` writes such grids for videos and checkpoints (side by side with
``--compare``); :class:`fima.engine.hooks.VisualizationHook` sends them to TensorBoard during
training (``VIS_PERIOD``, ``VIS_NUM_CLIPS``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from fima.config.config import CfgNode
from fima.modeling.motion import foreground_grid_mask, frame_difference

logger = logging.getLogger(__name__)

# 'jet': dark blue (low) through cyan, yellow to dark red (high), as a 256-entry lookup table.
_JET_STOPS = (
    (0.0, (0.0, 0.0, 0.5)),
    (0.125, (0.0, 0.0, 1.0)),
    (0.375, (0.0, 1.0, 1.0)),
    (0.625, (1.0, 1.0, 0.0)),
    (0.875, (1.0, 0.0, 0.0)),
    (1.0, (0.5, 0.0, 0.0)),
)
_LEVELS = np.linspace(0.0, 1.0, 256)
JET = torch.tensor(
    np.stack(
        [
            np.interp(_LEVELS, [s for s, _ in _JET_STOPS], [c[i] for _, c in _JET_STOPS])
            for i in range(3)
        ],
        axis=1,
    ),
    dtype=torch.float32,
)
# Overlay strengths: the heat map over the frame, and how dark background cells of the mask get.
HEAT_ALPHA = 0.5
BACKGROUND_SHADE = 0.3
MASK_OUTLINE = (0.2, 1.0, 0.2)
# Frame differences are small next to the [0, 1] range; shown amplified.
DIFFERENCE_GAIN = 4.0


def add_visualization_config(cfg: CfgNode) -> None:
    """Add ``VIS_PERIOD`` and ``VIS_NUM_CLIPS``: training-time image summaries.

    Args:
        cfg: the config to extend, in place.
    """
    # Every VIS_PERIOD iterations (and after the last one) the grids of VIS_NUM_CLIPS fixed
    # training clips go to TensorBoard (rank 0). 0 turns them off. A drawing costs a few encoder
    # forwards of VIS_NUM_CLIPS clips and CPU rendering (its seconds are logged as vis_time): on
    # the FIMA quick start it took 0.2-0.8 of a training step, i.e. < 0.2% of training time at
    # 500 (under 2% down to a period of about 40).
    cfg.VIS_PERIOD = 500
    cfg.VIS_NUM_CLIPS = 4


# -- drawing helpers shared with the confusion matrix ----------------------------------------------
def font(size: int = 13) -> ImageFont.ImageFont:
    """Pillow's built-in font.

    Args:
        size: in pixels; ignored on Pillow < 10.1.

    Returns:
        The font at ``size``, or the fixed bitmap font on Pillow < 10.1.
    """
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the fixed-size bitmap font
        return ImageFont.load_default()


def text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> tuple[int, int]:
    """The size of a text's bounding box.

    Args:
        draw: any drawing context (only measures).
        text: the text.
        font: the font it is drawn with.

    Returns:
        ``(width, height)`` in pixels.
    """
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def save_png(image: Image.Image, path: str) -> None:
    """Write an image as PNG atomically (a temp file renamed), creating the folder.

    Args:
        image: the image.
        path: the PNG file to write.
    """
    from fima.checkpoint import atomic_write  # checkpoint imports utils

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def to_pil(image: torch.Tensor) -> Image.Image:
    """Convert a CPU tensor to an RGB image.

    Args:
        image: ``[3, H, W]`` float in [0, 1] (clamped).

    Returns:
        An ``H x W`` RGB image.
    """
    array = image.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """Convert an image to what TensorBoard's ``add_image`` takes.

    Args:
        image: any Pillow image (converted to RGB).

    Returns:
        ``[3, H, W]`` float32 in [0, 1].
    """
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255


# -- maps ------------------------------------------------------------------------------------------
def colormap(values: torch.Tensor) -> torch.Tensor:
    """Colours of values through the 'jet' lookup table.

    Args:
        values: ``[...]`` in [0, 1] (clamped).

    Returns:
        ``[..., 3]`` float32 RGB in [0, 1], on ``values``' device.
    """
    index = values.clamp(0, 1).mul(len(JET) - 1).round().long()
    return JET.to(values.device)[index]


def activation_map(feat: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Class-agnostic activation maps: channel-mean, trilinear upsampling, min-max per clip.

    Args:
        feat: ``[N, C, T', H', W']`` last feature maps.
        size: ``(T, H, W)`` of the clips.

    Returns:
        ``[N, T, H, W]`` float32 in [0, 1] (all zeros for a constant map).
    """
    mean = feat.float().mean(dim=1, keepdim=True)
    heat = F.interpolate(mean, size=size, mode="trilinear", align_corners=False)[:, 0]
    low = heat.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
    high = heat.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    return (heat - low) / (high - low).clamp_min(1e-12)


@dataclass
class ClipMaps:
    """What a grid shows for one clip.

    Attributes:
        frames: ``[T, 3, S, S]`` float in [0, 1].
        difference: ``[T, 3, S, S]`` frame difference in [0, 1], 0.5 meaning no change.
        activation: ``[T, S, S]`` in [0, 1].
        mask: ``[H', W']`` bool foreground cells, or None.
    """

    frames: torch.Tensor
    difference: torch.Tensor
    activation: torch.Tensor
    mask: torch.Tensor | None = None


@torch.no_grad()
def compute_maps(
    encoder: nn.Module,
    clips: torch.Tensor,
    cfg: CfgNode,
    mask_encoder: nn.Module | None = None,
) -> list[ClipMaps]:
    """Frames, differences, activation maps and (with ``mask_encoder``) foreground masks.

    The encoders run on the clips as evaluation sees them (normalised with ``INPUT.MEAN`` /
    ``INPUT.STD``, no augmentation), in whatever mode they are in (call ``eval()`` first).

    Args:
        encoder: a backbone, ``[N, 3, T, S, S] -> [N, C, T', H', W']``; its map is shown.
        clips: ``[N, 3, T, S, S]`` uint8.
        cfg: ``INPUT.MEAN``, ``INPUT.STD``, ``MODEL.FIMA.DIFF_WRAP_FIRST_FRAME``.
        mask_encoder: the encoder whose RGB and difference feature maps give the foreground
            mask (FIMA's key encoder); None: no mask.

    Returns:
        One :class:`ClipMaps` per clip, on the CPU.
    """
    device = next(iter(encoder.parameters())).device
    x = clips.to(device).float().div_(255)
    mean = torch.tensor(cfg.INPUT.MEAN, device=device).view(1, 3, 1, 1, 1)
    std = torch.tensor(cfg.INPUT.STD, device=device).view(1, 3, 1, 1, 1)
    feat = encoder((x - mean) / std)
    heat = activation_map(feat, tuple(x.shape[2:]))
    shown = frame_difference(x)
    masks: list[torch.Tensor | None] = [None] * len(x)
    if mask_encoder is not None:
        diff = frame_difference(x, wrap=cfg.MODEL.FIMA.DIFF_WRAP_FIRST_FRAME)
        rgb_feat = feat if mask_encoder is encoder else mask_encoder((x - mean) / std)
        masks = list(foreground_grid_mask(rgb_feat, mask_encoder((diff - mean) / std)).cpu())
    return [
        ClipMaps(
            frames=x[i].transpose(0, 1).cpu(),
            difference=shown[i].transpose(0, 1).cpu(),
            activation=heat[i].cpu(),
            mask=masks[i],
        )
        for i in range(len(x))
    ]


def feature_encoders(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """The encoder whose activation a grid shows and the one that gives the mask (or None).

    MoCo and its subclasses: the query encoder (the one that is transferred); FIMA and its
    subclasses also draw the foreground mask, from the key encoder as in training. A classifier:
    its backbone.

    Args:
        model: the unwrapped training method.

    Returns:
        ``(encoder, mask_encoder or None)``.

    Raises:
        TypeError: the model has no ``encoder_q`` or ``backbone``.
    """
    from fima.modeling.ssl.fima import FIMA

    if isinstance(model, FIMA):
        return model.encoder_q, model.encoder_k
    for name in ("encoder_q", "backbone"):
        encoder = getattr(model, name, None)
        if isinstance(encoder, nn.Module):
            return encoder, None
    raise TypeError(f"{type(model).__name__} has no 'encoder_q' or 'backbone' to visualise")


def check_visualizable(model: nn.Module) -> None:
    """Start-up check of ``VIS_PERIOD > 0``: ``model`` has an encoder to draw
    (:func:`feature_encoders`), so that a method of one's own without one fails before it
    trains, not at the first drawing, ``VIS_PERIOD`` iterations in.

    Raises:
        ConfigError: naming ``VIS_PERIOD`` and what to do.
    """
    from fima.config import ConfigError

    try:
        feature_encoders(model)
    except TypeError as err:
        raise ConfigError(
            f"VIS_PERIOD: {err}; name the method's backbone module 'encoder_q' or 'backbone' "
            "(what the pictures, and the transfer of its checkpoints, read), or set VIS_PERIOD 0"
        ) from None


# -- drawing ---------------------------------------------------------------------------------------
def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, C, size, size]`` (bilinear)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def stretch_difference(difference: torch.Tensor) -> torch.Tensor:
    """A difference clip's deviation from 0.5 amplified ``DIFFERENCE_GAIN`` times (clipped): a
    fixed gain, so that a still clip stays grey rather than showing amplified noise.

    Args:
        difference: ``[T, 3, H, W]`` in [0, 1], 0.5 meaning no change.

    Returns:
        A new tensor of the same shape in [0, 1].
    """
    return (0.5 + DIFFERENCE_GAIN * (difference - 0.5)).clamp_(0, 1)


def heat_overlay(frames: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """Frames blended with the colour map of a heat map.

    Args:
        frames: ``[T, 3, H, W]`` in [0, 1].
        heat: ``[T, H, W]`` in [0, 1].

    Returns:
        ``[T, 3, H, W]`` in [0, 1].
    """
    colours = colormap(heat).permute(0, 3, 1, 2)
    return (1 - HEAT_ALPHA) * frames + HEAT_ALPHA * colours


def mask_overlay(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Frames with the foreground cells of a grid mask kept and outlined, the other cells
    darkened.

    Args:
        frames: ``[T, 3, H, W]`` in [0, 1], on the CPU.
        mask: ``[H', W']`` bool, stretched over the frame.

    Returns:
        ``[T, 3, H, W]`` in [0, 1].
    """
    height, width = frames.shape[-2:]
    rows = torch.arange(height) * mask.shape[0] // height
    cols = torch.arange(width) * mask.shape[1] // width
    inside = mask[rows][:, cols]

    def edges(cells: torch.Tensor) -> torch.Tensor:
        changed = cells[1:] != cells[:-1]
        first = torch.cat([torch.tensor([True]), changed])
        last = torch.cat([changed, torch.tensor([True])])
        return first | last

    border = edges(rows)[:, None] | edges(cols)[None, :]
    outline = torch.tensor(MASK_OUTLINE).view(3, 1, 1)
    shaded = torch.where(inside, frames, frames * BACKGROUND_SHADE)
    return torch.where(inside & border, outline, shaded)


def grid_rows(maps: ClipMaps, columns: int, cell: int) -> list[tuple[str, torch.Tensor]]:
    """The labelled rows of a grid.

    Args:
        maps: one clip's maps (:func:`compute_maps`).
        columns: the most frames shown, sampled uniformly over the clip.
        cell: the side of a tile in pixels.

    Returns:
        ``(label, tiles [F, 3, cell, cell])`` per row, ``F = min(columns, T)`` frames.
    """
    frames_total = maps.frames.shape[0]
    take = np.unique(np.linspace(0, frames_total - 1, min(columns, frames_total)).round())
    take = torch.as_tensor(take, dtype=torch.long)
    frames = _resize(maps.frames[take], cell)
    heat = _resize(maps.activation[take, None], cell)[:, 0]
    rows = [
        ("frames", frames),
        ("difference", _resize(stretch_difference(maps.difference)[take], cell)),
        ("activation", heat_overlay(frames, heat)),
    ]
    if maps.mask is not None:
        share = maps.mask.float().mean().item()
        rows.append((f"mask ({share:.0%} on)", mask_overlay(frames, maps.mask)))
    return rows


def render_grid(maps: ClipMaps, title: str = "", columns: int = 8, cell: int = 96) -> Image.Image:
    """One clip's grid: a column per sampled frame (at most ``columns``), a row per map.

    Args:
        maps: see :func:`compute_maps`.
        title: a line above the grid (the checkpoint, the video).
        columns: the most frames shown, sampled uniformly over the clip.
        cell: the side of a tile in pixels (tiles are resized to it).

    Returns:
        An RGB image.
    """
    rows = grid_rows(maps, columns, cell)
    face = font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(text_size(probe, label, face)[0] for label, _ in rows) + 12
    text_h = text_size(probe, "Ag", face)[1]
    gap, margin = 2, 6
    title_h = text_h + 2 * margin if title else margin
    count = rows[0][1].shape[0]
    width = label_w + count * (cell + gap) + margin
    if title:
        width = max(width, text_size(probe, title, face)[0] + 2 * margin)
    height = title_h + len(rows) * (cell + gap) + margin
    # The tiles are laid out in one tensor and converted to an image once.
    canvas = torch.ones(3, height, width)
    for r, (_, tiles) in enumerate(rows):
        y = title_h + r * (cell + gap)
        for c, tile in enumerate(tiles):
            x = label_w + c * (cell + gap)
            canvas[:, y : y + cell, x : x + cell] = tile
    image = to_pil(canvas)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((margin, margin), title, fill="black", font=face)
    for r, (label, _) in enumerate(rows):
        y = title_h + r * (cell + gap)
        draw.text((margin, y + (cell - text_h) / 2), label, fill="black", font=face)
    return image


def side_by_side(images: list[Image.Image], gap: int = 16) -> Image.Image:
    """Images next to each other, top-aligned, on white.

    Args:
        images: at least one image.
        gap: pixels between two images.

    Returns:
        A new RGB image.
    """
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    height = max(im.height for im in images)
    canvas = Image.new("RGB", (width, height), "white")
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas


# -- clips -----------------------------------------------------------------------------------------
def load_clip(path: str, cfg: CfgNode) -> torch.Tensor:
    """The middle test clip of a video, as evaluation sees it.

    Args:
        path: the video file.
        cfg: uses ``INPUT.NUM_FRAMES``, ``SAMPLING_RATE``, ``TEST_SHORT_SIDE``, the crop keys.

    Returns:
        ``[3, T, S, S]`` uint8 (the centre crop).

    Raises:
        DecodeError: the video cannot be read.
    """
    from fima.data.build import load_test_clips
    from fima.data.decoder import probe_video

    return load_test_clips(path, probe_video(path).num_frames, cfg, num_clips=1)[0]


def dataset_clips(cfg: CfgNode, split: str, count: int) -> list[tuple[str, torch.Tensor]]:
    """``count`` fixed clips of a dataset split: the middle clip of evenly spaced videos.

    Deterministic and independent of any RNG or loader, so that drawing them changes nothing
    in a training run. A video that cannot be decoded is skipped (logged) for the next one.

    Args:
        cfg: the finished config.
        split: the dataset split.
        count: clips wanted.

    Returns:
        ``(video path, clip [3, T, S, S] uint8)`` pairs, at most ``count``.
    """
    from fima.data.datasets.build import build_dataset
    from fima.data.decoder import DecodeError

    dataset = build_dataset(cfg, split)
    order = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round())
    chosen = [int(i) for i in order]
    # Evenly spaced first, then the rest in order as replacements for undecodable ones.
    candidates = [*chosen, *sorted(set(range(len(dataset))) - set(chosen))]
    clips: list[tuple[str, torch.Tensor]] = []
    for index in candidates:
        if len(clips) == count:
            break
        path = dataset[index].path
        try:
            clips.append((path, load_clip(path, cfg)))
        except DecodeError as err:
            logger.warning("Visualization: skipping %s (%s)", path, err)
    return clips


# -- checkpoints -----------------------------------------------------------------------------------
def is_fima_state(state: dict[str, torch.Tensor], cfg: CfgNode) -> bool:
    """Whether a checkpoint's model state is FIMA's.

    Args:
        state: the checkpoint's model state.
        cfg: the config, consulted for a checkpoint without a pretraining method's layout (a
            bare or classifier backbone).

    Returns:
        With ``encoder_q.*`` keys, whether the state holds the motion decoder; otherwise
        whether ``cfg``'s method is FIMA or a subclass.
    """
    from fima.modeling.ssl.build import SSL_METHOD_REGISTRY
    from fima.modeling.ssl.fima import FIMA

    if any(key.startswith("encoder_q.") for key in state):
        return any(key.startswith("decoder.") for key in state)
    return issubclass(SSL_METHOD_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), FIMA)


def load_encoders(
    cfg: CfgNode, weights: str, device: torch.device | str = "cpu"
) -> tuple[nn.Module, nn.Module | None]:
    """The encoders a grid needs, from a checkpoint file, URL or model-zoo name, in eval mode.

    The activation map comes from the query encoder (``encoder_q.*``, or a classifier's or bare
    backbone). For a FIMA checkpoint the mask comes from the key encoder (``encoder_k.*``), as
    in training, or from the same encoder when the checkpoint has no key encoder.

    Args:
        cfg: the backbone's config (``MODEL.BACKBONE``).
        weights: anything :func:`fima.checkpoint.backbone_weights.resolve_weights` accepts.
        device: where the encoders run.

    Returns:
        ``(encoder, mask_encoder or None)``.

    Raises:
        FileNotFoundError: ``weights`` names nothing.
        CheckpointReadError: the file is not a readable fima checkpoint.
        CheckpointMismatchError: the checkpoint does not fit the config's backbone.
    """
    from fima.checkpoint.backbone_weights import load_backbone_weights, resolve_weights
    from fima.checkpoint.checkpointer import load_checkpoint_file, model_state
    from fima.modeling.backbone import build_backbone

    state = model_state(load_checkpoint_file(resolve_weights(weights))["model"], weights)
    encoder = build_backbone(cfg)
    load_backbone_weights(encoder, state, source=weights)
    encoder.to(device).eval()
    if not is_fima_state(state, cfg):
        return encoder, None
    key_state = {k[len("encoder_k.") :]: v for k, v in state.items() if k.startswith("encoder_k.")}
    if not key_state:
        return encoder, encoder
    mask_encoder = build_backbone(cfg)
    load_backbone_weights(mask_encoder, key_state, source=f"{weights} (key encoder)")
    return encoder, mask_encoder.to(device).eval()
