"""SyntheticMotion: a built-in motion video dataset that fima generates itself.

Each class is a motion pattern of a foreground object; everything a single frame shows (the
background texture and colours, the distractor shapes, the object's shape, colour, texture, size
and start position) is drawn at random per video, independently of the class. So the class is only
in the motion, and a model that tells videos apart by their backgrounds learns nothing about it.

The videos are real MPEG-4 files in UCF101's layout (class folders, ``ucfTrainTestlist``), so the
UCF101 reader loads them. They are generated on first use into a cache directory named after the
generation settings (``$FIMA_CACHE``, default ``~/.cache/fima``), atomically and under a file lock,
so concurrent processes neither duplicate nor see half a dataset.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence

import av
import numpy as np

from fima.config.config import CfgNode
from fima.config.config import CfgNode as CN
from fima.data.datasets.build import DATASET_REGISTRY, VideoDataset
from fima.data.datasets.ucf101 import read_ucf101_split
from fima.utils.env import cache_root
from fima.utils.files import nearest_existing
from fima.utils.progress import progress_bar

logger = logging.getLogger(__name__)


# A trajectory maps frame times ``t [T]`` and the video's drawn motion parameters to centre
# offsets (dx [T], dy [T]) in pixels relative to a start position. Every video is also mirrored
# left-right at random (see object_positions), so the classes are the motions up to a horizontal
# flip: the flip augmentation of the recipe never turns one class into another. Periodic motions
# repeat within a clip's span (PERIOD frames, against the 16 frames that 8 frames at a sampling
# rate of 2 cover), so every class can be told from any clip, not only from the whole video.
@dataclasses.dataclass(frozen=True)
class MotionParams:
    """One video's motion draw: ``speed`` px/frame, ``radius`` px, ``period`` frames, ``phase``."""

    speed: float
    radius: float
    period: float
    phase: float


Trajectory = Callable[[np.ndarray, MotionParams], tuple[np.ndarray, np.ndarray]]


def _slide(ux: float, uy: float) -> Trajectory:
    return lambda t, m: (ux * m.speed * t, uy * m.speed * t)


def _circle(t: np.ndarray, m: MotionParams) -> tuple[np.ndarray, np.ndarray]:
    # Clockwise on screen; the random mirror makes it either way.
    angle = m.phase + 2 * np.pi * t / m.period
    return m.radius * np.cos(angle), m.radius * np.sin(angle)


def _shake(ux: float, uy: float) -> Trajectory:
    def trajectory(t: np.ndarray, m: MotionParams) -> tuple[np.ndarray, np.ndarray]:
        offset = m.radius * np.sin(m.phase + 2 * np.pi * t / m.period)
        return ux * offset, uy * offset

    return trajectory


def _still(t: np.ndarray, m: MotionParams) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros_like(t), np.zeros_like(t)


MOTIONS: dict[str, Trajectory] = {
    "SlideHorizontal": _slide(1, 0),
    "SlideUp": _slide(0, -1),
    "SlideDown": _slide(0, 1),
    "SlideDiagonalUp": _slide(math.sqrt(0.5), -math.sqrt(0.5)),
    "SlideDiagonalDown": _slide(math.sqrt(0.5), math.sqrt(0.5)),
    "Circle": _circle,
    "ShakeHorizontal": _shake(1, 0),
    "ShakeVertical": _shake(0, 1),
    "ShakeDiagonal": _shake(math.sqrt(0.5), math.sqrt(0.5)),
    "Still": _still,
}


def add_synthetic_config(cfg: CfgNode) -> None:
    """``DATA.SYNTHETIC``: what the built-in motion dataset generates."""
    cfg.DATA.SYNTHETIC = CN()
    # Motion classes, from fima.data.datasets.synthetic.MOTIONS.
    cfg.DATA.SYNTHETIC.CLASSES = (
        "SlideHorizontal", "SlideUp", "SlideDown", "SlideDiagonalUp", "SlideDiagonalDown",
        "Circle", "ShakeHorizontal", "ShakeVertical",
    )  # fmt: skip
    # Videos per class (UCF101 "groups"); TEST_GROUPS of them per class form each fold's test set.
    cfg.DATA.SYNTHETIC.VIDEOS_PER_CLASS = 16
    cfg.DATA.SYNTHETIC.TEST_GROUPS = 4
    # Frames per video: two 16-frame clips fit side by side (FIMA and MoCo sample two per video).
    cfg.DATA.SYNTHETIC.NUM_FRAMES = 32
    cfg.DATA.SYNTHETIC.HEIGHT = 96
    cfg.DATA.SYNTHETIC.WIDTH = 128
    cfg.DATA.SYNTHETIC.FPS = 25
    # Slide speed in frame widths per frame, drawn uniformly per video. A path that would leave
    # the frame is slowed down to fit: the object stays whole and inside the frame.
    cfg.DATA.SYNTHETIC.SPEED = (0.008, 0.016)
    # Amplitude of the periodic motions (shake, circle) in frame heights, and their period in
    # frames, drawn uniformly per video.
    cfg.DATA.SYNTHETIC.RADIUS = (0.08, 0.16)
    cfg.DATA.SYNTHETIC.PERIOD = (10.0, 20.0)
    # Object size (its bounding square's side) in frame heights.
    cfg.DATA.SYNTHETIC.OBJECT_SIZE = (0.25, 0.4)
    # Static distractor shapes painted on the background, per video.
    cfg.DATA.SYNTHETIC.DISTRACTORS = 3
    # Std of per-pixel Gaussian noise added to every frame, in [0, 1] units: sensor noise that
    # frame differences see as motion everywhere.
    cfg.DATA.SYNTHETIC.NOISE = 0.01
    cfg.DATA.SYNTHETIC.KEYFRAME_INTERVAL = 16
    cfg.DATA.SYNTHETIC.SEED = 0


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled random grid: a smooth texture ``[H, W]`` in [0, 1]."""
    grid = rng.random((cells + 1, cells + 1))
    ys = np.linspace(0, cells, height)
    xs = np.linspace(0, cells, width)
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """An anti-aliased random shape (disc, square, triangle, ring or diamond) ``[size, size]``."""
    kind = rng.integers(5)
    sub = 4  # supersampling for soft edges
    c = (np.arange(size * sub) + 0.5) / (size * sub) * 2 - 1
    y, x = np.meshgrid(c, c, indexing="ij")
    if kind == 0:
        inside = x**2 + y**2 <= 0.9**2
    elif kind == 1:
        inside = (np.abs(x) <= 0.75) & (np.abs(y) <= 0.75)
    elif kind == 2:
        inside = (y <= 0.8) & (y >= -0.8 + 2 * np.abs(x) * 0.9)
    elif kind == 3:
        inside = (x**2 + y**2 <= 0.9**2) & (x**2 + y**2 >= 0.45**2)
    else:
        inside = np.abs(x) + np.abs(y) <= 0.9
    return inside.reshape(size, sub, size, sub).mean(axis=(1, 3))


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.05, 0.95, size=3)


def _paste(frame: np.ndarray, alpha: np.ndarray, sprite: np.ndarray, left: int, top: int) -> None:
    """Alpha-blend ``sprite [h, w, 3]`` onto ``frame [H, W, 3]`` at (left, top), in place.

    Whatever falls outside the frame is dropped.
    """
    height, width = frame.shape[:2]
    y1, x1 = max(top, 0), max(left, 0)
    y2, x2 = min(top + alpha.shape[0], height), min(left + alpha.shape[1], width)
    if y1 < y2 and x1 < x2:
        a = alpha[y1 - top : y2 - top, x1 - left : x2 - left]
        s = sprite[y1 - top : y2 - top, x1 - left : x2 - left]
        frame[y1:y2, x1:x2] = a * s + (1 - a) * frame[y1:y2, x1:x2]


def _textured_shape(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A random shape with a two-colour stripe texture.

    Returns:
        alpha ``[size, size, 1]`` and colour ``[size, size, 3]``, both in [0, 1].
    """
    alpha = _shape_mask(rng, size)[..., None]
    period = rng.uniform(3, 8)
    stripes = 0.5 + 0.5 * np.sin(
        2
        * np.pi
        * (np.arange(size)[:, None] * rng.uniform(-1, 1) + np.arange(size)[None, :])
        / period
    )
    first, second = _random_colour(rng), _random_colour(rng)
    sprite = stripes[..., None] * first + (1 - stripes[..., None]) * second
    return alpha, sprite


def _fit_path(offsets: np.ndarray, room: float) -> np.ndarray:
    """Scale a path's offsets ``[T]`` about its mean so that its extent is at most ``room`` px."""
    extent = float(offsets.max() - offsets.min())
    if extent <= room:
        return offsets
    return offsets.mean() + (offsets - offsets.mean()) * (max(room, 0.0) / extent)


def paint_distractors(
    background: np.ndarray, count: int, size: Sequence[float], rng: np.random.Generator
) -> None:
    """Paint ``count`` static textured shapes into ``background [H, W, 3]`` in place.

    They look like the moving object (sides 0.6x its ``size`` range, in frame heights) and may
    be cut by the frame's border, so that a single frame does not tell which shape will move.
    """
    height, width = background.shape[:2]
    for _ in range(count):
        side = max(2, int(round(rng.uniform(*size) * height * 0.6)))
        alpha, sprite = _textured_shape(rng, side)
        left = int(rng.integers(-side // 2, width - side // 2))
        top = int(rng.integers(-side // 2, height - side // 2))
        _paste(background, alpha, sprite, left, top)


def object_positions(
    motion: Trajectory,
    params: MotionParams,
    size: int,
    frames: int,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (left ``[T]``, top ``[T]``, int) of a ``size``-px object doing ``motion``.

    The motion is mirrored left-right at random, slowed down where its path would not fit, and
    started where the whole path keeps the object inside the ``height x width`` frame.
    """
    dx, dy = motion(np.arange(frames, dtype=np.float64), params)
    dx = dx * rng.choice((-1.0, 1.0))  # a random left-right mirror of the motion
    dx, dy = _fit_path(dx, width - size), _fit_path(dy, height - size)
    ux, uy = rng.random(2)
    x0 = -dx.min() + ux * (width - size - (dx.max() - dx.min()))
    y0 = -dy.min() + uy * (height - size - (dy.max() - dy.min()))
    # Clipped after rounding: a path that fits exactly may round one pixel out.
    lefts = np.clip(np.round(x0 + dx), 0, width - size).astype(int)
    tops = np.clip(np.round(y0 + dy), 0, height - size).astype(int)
    return lefts, tops


def render_video(motion: Trajectory, rng: np.random.Generator, cfg: CfgNode) -> np.ndarray:
    """Render one video of ``motion`` with random appearance.

    The random draws are the same for every class (appearance first, then the motion parameters
    and a start position), so two classes rendered from equal generators differ only in the motion.
    The object stays whole inside the frame: a path longer than the frame allows is slowed down.

    Returns:
        ``[T, H, W, 3]`` uint8 frames.
    """
    syn = cfg.DATA.SYNTHETIC
    height, width, frames = syn.HEIGHT, syn.WIDTH, syn.NUM_FRAMES
    # Background: a smooth field mixing two random colours, modulated by an oriented grating of
    # random frequency and phase (a texture that colour jitter does not hide), with fine grain.
    mix = _smooth_noise(rng, height, width, int(rng.integers(2, 6)))
    grain = _smooth_noise(rng, height, width, int(rng.integers(12, 24)))
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
    ys, xs = np.mgrid[0:height, 0:width]
    grating = 0.5 + 0.5 * np.sin(
        2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi)
    )
    contrast = rng.uniform(0.15, 0.4)
    background = (
        (mix[..., None] * _random_colour(rng) + (1 - mix[..., None]) * _random_colour(rng))
        * ((1 - contrast) + contrast * grating[..., None])
        * (0.85 + 0.15 * grain[..., None])
    )
    paint_distractors(background, syn.DISTRACTORS, syn.OBJECT_SIZE, rng)
    # Foreground object: random shape, colour and stripe texture.
    size = max(2, int(round(rng.uniform(*syn.OBJECT_SIZE) * height)))
    alpha, sprite = _textured_shape(rng, size)
    params = MotionParams(
        speed=rng.uniform(*syn.SPEED) * width,
        radius=rng.uniform(*syn.RADIUS) * height,
        period=rng.uniform(*syn.PERIOD),
        phase=rng.uniform(0, 2 * np.pi),
    )
    lefts, tops = object_positions(motion, params, size, frames, height, width, rng)
    video = np.empty((frames, height, width, 3), dtype=np.float32)
    for t in range(frames):
        video[t] = background
        _paste(video[t], alpha, sprite, int(lefts[t]), int(tops[t]))
    video += rng.normal(0, syn.NOISE, size=video.shape).astype(np.float32)
    return (np.clip(video, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_video(path: str, frames: np.ndarray, fps: int, keyframe_interval: int) -> None:
    """Encode ``[T, H, W, 3]`` uint8 frames as MPEG-4 into ``path`` (an ``.avi``)."""
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        stream.codec_context.gop_size = keyframe_interval
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _settings(cfg: CfgNode) -> dict:
    syn = cfg.DATA.SYNTHETIC
    unknown = [c for c in syn.CLASSES if c not in MOTIONS]
    if unknown or len(syn.CLASSES) < 2:
        raise ValueError(
            f"DATA.SYNTHETIC.CLASSES must name at least 2 of {sorted(MOTIONS)}"
            + (f"; unknown: {unknown}" if unknown else f", got {list(syn.CLASSES)}")
        )
    if not 1 <= syn.TEST_GROUPS < syn.VIDEOS_PER_CLASS:
        raise ValueError(
            "DATA.SYNTHETIC.TEST_GROUPS must be in [1, VIDEOS_PER_CLASS), got "
            f"{syn.TEST_GROUPS} with VIDEOS_PER_CLASS={syn.VIDEOS_PER_CLASS}"
        )
    # (key, smallest allowed low end, largest allowed high end) of the uniform ranges.
    ranges = (
        ("SPEED", 0.0, math.inf),
        ("RADIUS", 0.0, math.inf),
        ("PERIOD", 2.0, math.inf),  # at least 2 frames: a shake must alternate
        ("OBJECT_SIZE", 0.0, min(1.0, syn.WIDTH / syn.HEIGHT)),  # the object fits in the frame
    )
    for key, lowest, highest in ranges:
        values = tuple(syn[key])
        if not (len(values) == 2 and lowest <= values[0] <= values[1] <= highest):
            raise ValueError(
                f"DATA.SYNTHETIC.{key} must be (low, high) with {lowest} <= low <= high <= "
                f"{highest:.3g}, got {values}"
            )
    if syn.DISTRACTORS < 0 or syn.NOISE < 0:
        raise ValueError(
            "DATA.SYNTHETIC.DISTRACTORS and NOISE must be >= 0, got "
            f"{syn.DISTRACTORS} and {syn.NOISE}"
        )
    settings = {k: (list(v) if isinstance(v, tuple | list) else v) for k, v in syn.items()}
    settings["CLASSES"] = sorted(settings["CLASSES"])
    settings["FORMAT"] = 5  # bump when the generator changes what it draws
    return settings


def synthetic_root(cfg: CfgNode) -> str:
    """Where the dataset of these settings lives: ``DATA.ROOT`` or a cache folder named by them."""
    if cfg.DATA.ROOT:
        return os.path.abspath(os.path.expanduser(cfg.DATA.ROOT))
    digest = hashlib.sha256(json.dumps(_settings(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(cache_root(), "datasets", f"synthetic_motion-{digest}")


def generate_synthetic_dataset(cfg: CfgNode, root: str) -> None:
    """Write the dataset to ``root`` in UCF101 layout unless it is already complete there."""
    settings = _settings(cfg)
    done_marker = os.path.join(root, "settings.json")
    if os.path.isfile(done_marker):
        _require_same_settings(done_marker, settings)
        return
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    with open(root + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be generating the same dataset
        if os.path.isfile(done_marker):
            _require_same_settings(done_marker, settings)
            return
        _require_usable_root(root, settings)
        logger.info("Generating the SyntheticMotion dataset into %s ...", root)
        staging = tempfile.mkdtemp(prefix=".synthetic-", dir=parent)
        try:
            _generate_into(staging, settings, cfg)
            if os.path.exists(root):
                os.rmdir(root)
            os.rename(staging, root)
        finally:
            if os.path.exists(staging):
                shutil.rmtree(staging)
        logger.info("SyntheticMotion ready: %s", root)


def _require_usable_root(root: str, settings: dict) -> None:
    """Fail unless ``root`` is absent, empty, or a complete dataset of ``settings``.

    Raises:
        FileExistsError: ``root`` holds a dataset of other settings, or other files.
    """
    done_marker = os.path.join(root, "settings.json")
    if os.path.isfile(done_marker):
        _require_same_settings(done_marker, settings)
    elif os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise FileExistsError(
            f"{root} exists, is not empty and is not a complete SyntheticMotion dataset; "
            "move it away or point DATA.ROOT elsewhere"
        )


def _generation_problem(root: str) -> str | None:
    """Why the dataset cannot be generated into ``root``, or None: it is complete there, or the
    nearest existing folder above it can be written (not read-only, not another user's)."""
    if os.path.isfile(os.path.join(root, "settings.json")):
        return None
    existing = nearest_existing(os.path.dirname(root))
    if os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK):
        return None
    reason = "cannot be written" if os.path.isdir(existing) else "is a file"
    return (
        f"the SyntheticMotion dataset is generated into {root} on first use, but {existing} "
        f"{reason}"
    )


def _require_same_settings(done_marker: str, settings: dict) -> None:
    """Fail if the dataset at ``done_marker``'s folder was generated with other settings (a
    ``DATA.ROOT`` reused with other ``DATA.SYNTHETIC`` values), rather than read other videos."""
    with open(done_marker) as f:
        written = json.load(f)
    differ = sorted(
        key for key in set(settings) | set(written) if settings.get(key) != written.get(key)
    )
    if differ:
        changes = ", ".join(
            f"{key} {written.get(key)!r} there, {settings.get(key)!r} here" for key in differ
        )
        raise FileExistsError(
            f"{os.path.dirname(done_marker)} holds a SyntheticMotion dataset generated with other "
            f"DATA.SYNTHETIC settings ({changes}); point DATA.ROOT elsewhere (or leave it empty "
            "for a cache folder per setting), or move that dataset away"
        )


def _generate_into(staging: str, settings: dict, cfg: CfgNode) -> None:
    syn = cfg.DATA.SYNTHETIC
    classes = settings["CLASSES"]
    groups, test_groups = syn.VIDEOS_PER_CLASS, syn.TEST_GROUPS
    lists = os.path.join(staging, "ucfTrainTestlist")
    os.makedirs(lists)
    rels: dict[tuple[int, int], str] = {}
    for name in classes:
        os.makedirs(os.path.join(staging, "UCF-101", name))
    videos = [(label, group) for label in range(len(classes)) for group in range(1, groups + 1)]
    for label, group in progress_bar(videos, "generating SyntheticMotion", unit="video"):
        name = classes[label]
        rel = f"{name}/v_{name}_g{group:02d}_c01.avi"
        rng = np.random.default_rng([syn.SEED, label, group])
        frames = render_video(MOTIONS[name], rng, cfg)
        path = os.path.join(staging, "UCF-101", rel)
        write_video(path, frames, syn.FPS, syn.KEYFRAME_INTERVAL)
        rels[label, group] = rel
    with open(os.path.join(lists, "classInd.txt"), "w") as f:
        f.writelines(f"{i + 1} {name}\n" for i, name in enumerate(classes))
    for fold in (1, 2, 3):
        test = {((fold - 1) * test_groups + g) % groups + 1 for g in range(test_groups)}
        with (
            open(os.path.join(lists, f"trainlist0{fold}.txt"), "w") as train_file,
            open(os.path.join(lists, f"testlist0{fold}.txt"), "w") as test_file,
        ):
            for (label, group), rel in sorted(rels.items()):
                if group in test:
                    test_file.write(f"{rel}\n")
                else:
                    train_file.write(f"{rel} {label + 1}\n")
    with open(os.path.join(staging, "settings.json"), "w") as f:
        json.dump(settings, f, indent=2, sort_keys=True)


@DATASET_REGISTRY.register()
class SyntheticMotion(VideoDataset):
    """Motion-pattern classes on random appearance, generated on first use (see module doc)."""

    @classmethod
    def validate_config(cls, cfg: CfgNode, world_size: int) -> None:
        from fima.config.validation import ConfigError

        try:
            settings = _settings(cfg)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        # A DATA.ROOT that holds another dataset is refused here, before the run writes
        # anything, rather than from inside the data loader's construction.
        root = synthetic_root(cfg)
        if cfg.DATA.ROOT:
            try:
                _require_usable_root(root, settings)
            except FileExistsError as err:
                raise ConfigError(f"DATA.ROOT: {err}") from None
        problem = _generation_problem(root)
        if problem is not None:
            where = "DATA.ROOT" if cfg.DATA.ROOT else "FIMA_CACHE (the folder fima caches in)"
            raise ConfigError(f"{problem}; set {where} to a folder you can write")

    def __init__(self, cfg: CfgNode, split: str) -> None:
        root = synthetic_root(cfg)
        generate_synthetic_dataset(cfg, root)
        records, class_names = read_ucf101_split(root, split, cfg.DATA.SPLIT)
        super().__init__(records, class_names, name="SyntheticMotion", split=split, root=root)
