"""A motion dataset built independently of fima's SyntheticMotion, as a VideoList folder.

The motion benchmark's own data comes from ``fima.data.datasets.synthetic``. To check that its
ordering is not a property of that one generator, this module renders another dataset with code
of its own, with other motions and other appearance statistics, and writes it as plain H.264
files with ``train.csv`` / ``test.csv`` lists that fima reads through its ``VideoList`` dataset,
as a user's own videos would be read:

    python tests/benchmark/independent_motion.py /tmp/independent_motion
    python tools/benchmark.py --task motion --output-dir output/motion_benchmark_independent \\
        DATA.DATASET VideoList DATA.ROOT /tmp/independent_motion

What differs from SyntheticMotion, chosen before any method ran on it:

- **Motions**: the object grows, shrinks, bounces vertically (a ``|sin|`` path: sharp at the
  floor, slow at the top), falls with constant acceleration, or zigzags (a horizontal drift with a
  vertical triangle wave). None is one of SyntheticMotion's slides, shakes or circles; two of them
  (grow, shrink) change the object's size, not its position. Every class is the same under a
  left-right mirror, so the benchmark's flips never turn one class into another.
- **Appearance**: a Mondrian-like grid of coloured tiles or a two-colour checkerboard of random
  cell size, under a linear brightness ramp, instead of smooth noise and gratings; the object is a
  solid ellipse with a dark rim instead of a striped shape; 2 static ellipses of the object's size
  range as distractors; a global brightness flicker of up to 2% per frame and per-pixel noise of
  std 0.015.
- **Files**: H.264 (``libx264``) in MP4 containers instead of MPEG-4 Part 2 in AVI.

Everything a single frame shows is drawn per video from the video's own generator, before and
independently of its class, so the class is only in the motion.

A control, not the benchmark's check: ``--class-backgrounds P`` makes the appearance carry the
class, as it does in real action datasets (a pool for swimming, a field for football). Each class
gets its own background style (coarse or fine tiles, a coarse or fine checkerboard, stripes),
which a video takes with probability P (else a style drawn at random); the colours stay drawn
per video. P = 0 (the default) renders every frame as the generator did before this option.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Callable

import av
import numpy as np

from fima.engine.defaults import int_at_least

# A motion maps frame times ``t [T]`` (0 .. T-1), the frame size and the video's generator to the
# object's centre ``(x [T], y [T])`` in pixels and its scale ``[T]`` relative to its drawn size.
Motion = Callable[
    [np.ndarray, int, int, float, np.random.Generator], tuple[np.ndarray, np.ndarray, np.ndarray]
]


def _grow(t, height, width, size, rng):
    scale = np.linspace(1.0, rng.uniform(1.6, 2.0), len(t))
    return _still_centre(t, height, width, size * scale.max(), rng) + (scale,)


def _shrink(t, height, width, size, rng):
    scale = np.linspace(rng.uniform(1.6, 2.0), 1.0, len(t))
    return _still_centre(t, height, width, size * scale.max(), rng) + (scale,)


def _still_centre(t, height, width, extent, rng):
    x = rng.uniform(extent / 2, width - extent / 2)
    y = rng.uniform(extent / 2, height - extent / 2)
    return np.full(len(t), x), np.full(len(t), y)


def _bounce(t, height, width, size, rng):
    period = rng.uniform(10.0, 16.0)
    drop = rng.uniform(0.3, 0.5) * height
    floor = rng.uniform(size / 2 + drop, height - size / 2)
    y = floor - drop * np.abs(np.sin(np.pi * t / period + rng.uniform(0, np.pi)))
    x = np.full(len(t), rng.uniform(size / 2, width - size / 2))
    return x, y, np.ones(len(t))


def _fall(t, height, width, size, rng):
    room = height - size
    start = rng.uniform(0, 0.15) * room
    accel = 2 * (room - start) * rng.uniform(0.8, 1.0) / (t[-1] ** 2)
    y = size / 2 + start + 0.5 * accel * t**2
    x = np.full(len(t), rng.uniform(size / 2, width - size / 2))
    return x, y, np.ones(len(t))


def _zigzag(t, height, width, size, rng):
    drift = rng.uniform(0.8, 1.4) * rng.choice((-1.0, 1.0))
    period = rng.uniform(8.0, 14.0)
    amplitude = rng.uniform(0.12, 0.2) * height
    phase = rng.uniform(0, 1)
    triangle = 2 * np.abs(2 * ((t / period + phase) % 1.0) - 1) - 1  # in [-1, 1]
    x = drift * t
    x = x - x.min() + rng.uniform(size / 2, width - size / 2 - np.ptp(x))
    y = rng.uniform(size / 2 + amplitude, height - size / 2 - amplitude) + amplitude * triangle
    return x, y, np.ones(len(t))


MOTIONS: dict[str, Motion] = {
    "Grow": _grow,
    "Shrink": _shrink,
    "Bounce": _bounce,
    "Fall": _fall,
    "Zigzag": _zigzag,
}


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.1, 0.9, size=3)


def _under_ramp(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` ``[H, W, 3]`` under a linear brightness ramp of random direction (x0.8-1.2)."""
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xs * np.cos(angle) + ys * np.sin(angle)) / max(height, width)
    return image * (0.8 + 0.3 * (ramp - ramp.min()))[..., None]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Tiles or a checkerboard under a brightness ramp: ``[H, W, 3]`` in [0, 1]."""
    ys, xs = np.mgrid[0:height, 0:width]
    if rng.random() < 0.5:
        cells_y, cells_x = rng.integers(2, 6), rng.integers(2, 7)
        colours = rng.uniform(0.1, 0.9, size=(cells_y, cells_x, 3))
        image = colours[ys * cells_y // height, xs * cells_x // width]
    else:
        cell = rng.integers(6, 20)
        first, second = _colour(rng), _colour(rng)
        odd = ((ys // cell + xs // cell) % 2)[..., None]
        image = odd * first + (1 - odd) * second
    return _under_ramp(image, rng)


def _styled_background(style: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``[H, W, 3]`` in [0, 1] of one of 5 styles (``--class-backgrounds``): coarse tiles, fine
    tiles, a coarse checkerboard, a fine checkerboard, horizontal stripes; under a brightness
    ramp like :func:`_background`."""
    ys, xs = np.mgrid[0:height, 0:width]
    if style in (0, 1):
        cells_y, cells_x = ((2, 3), (6, 8))[style]
        colours = rng.uniform(0.1, 0.9, size=(cells_y, cells_x, 3))
        image = colours[ys * cells_y // height, xs * cells_x // width]
    else:
        cell = {2: 20, 3: 6, 4: 8}[style]
        first, second = _colour(rng), _colour(rng)
        odd = ((ys // cell) % 2 if style == 4 else (ys // cell + xs // cell) % 2)[..., None]
        image = odd * first + (1 - odd) * second
    return _under_ramp(image, rng)


NUM_STYLES = 5


def _paint_ellipse(
    frame: np.ndarray, cx: float, cy: float, rx: float, ry: float, colour: np.ndarray
) -> None:
    """A solid ellipse with a dark rim, anti-aliased by 2x2 supersampling, into ``frame``."""
    height, width = frame.shape[:2]
    offsets = (-0.25, 0.25)
    inside = np.zeros((height, width))
    core = np.zeros((height, width))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    for oy in offsets:
        for ox in offsets:
            r = ((xs + 0.5 + ox - cx) / rx) ** 2 + ((ys + 0.5 + oy - cy) / ry) ** 2
            inside += (r <= 1.0) / 4
            core += (r <= 0.7**2) / 4
    rim = inside - core
    frame[:] = frame * (1 - inside[..., None]) + core[..., None] * colour
    frame += rim[..., None] * colour * 0.35


def render(
    motion: Motion,
    rng: np.random.Generator,
    height: int,
    width: int,
    frames: int,
    style: int | None = None,
) -> np.ndarray:
    """One video ``[T, H, W, 3]`` uint8 of ``motion``; the appearance is drawn first, its
    background in ``style`` (``_styled_background``) if one is given."""
    if style is None:
        background = _background(rng, height, width)
    else:
        background = _styled_background(style, rng, height, width)
    size = rng.uniform(0.2, 0.32) * height
    aspect = rng.uniform(0.7, 1.4)
    colour = _colour(rng)
    for _ in range(2):  # static distractors of the object's size range
        _paint_ellipse(
            background,
            rng.uniform(0, width),
            rng.uniform(0, height),
            rng.uniform(0.2, 0.32) * height / 2,
            rng.uniform(0.2, 0.32) * height / 2 * rng.uniform(0.7, 1.4),
            _colour(rng),
        )
    flicker = 1 + rng.uniform(-0.02, 0.02, size=frames)
    t = np.arange(frames, dtype=np.float64)
    x, y, scale = motion(t, height, width, size * max(aspect, 1.0), rng)
    video = np.empty((frames, height, width, 3))
    for i in range(frames):
        video[i] = background
        rx = size * scale[i] / 2
        _paint_ellipse(video[i], x[i], y[i], rx, rx * aspect, colour)
        video[i] *= flicker[i]
    video += rng.normal(0, 0.015, size=video.shape)
    return (np.clip(video, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_mp4(path: str, video: np.ndarray, fps: int = 25) -> None:
    """Encode ``[T, H, W, 3]`` uint8 as H.264 in an MP4 container (near-lossless, crf 18)."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18"})
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        for array in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_dataset(
    root: str,
    train_per_class: int = 64,
    test_per_class: int = 100,
    height: int = 96,
    width: int = 128,
    frames: int = 32,
    seed: int = 0,
    class_backgrounds: float = 0.0,
) -> None:
    """Write ``root/videos/<class>/<class>_<i>.mp4`` and ``root/{train,test}.csv`` (path,label).

    Video ``i`` of every class draws from ``np.random.default_rng((seed, i))``, so the same
    appearance draws are shared across classes and only the motion differs between them.
    ``class_backgrounds`` > 0 is the control of the module docstring: class ``k``'s video ``i``
    takes style ``k`` with that probability, else a random one (drawn from
    ``np.random.default_rng((seed + 1, k, i))``).

    Raises:
        FileExistsError: ``root`` already holds a list file (nothing is overwritten).
    """
    for split in ("train", "test"):
        if os.path.exists(os.path.join(root, f"{split}.csv")):
            raise FileExistsError(f"{root} already holds {split}.csv; give an empty folder")
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for k, (name, motion) in enumerate(MOTIONS.items()):
        os.makedirs(os.path.join(root, "videos", name), exist_ok=True)
        for i in range(train_per_class + test_per_class):
            relative = os.path.join("videos", name, f"{name}_{i:03d}.mp4")
            style = None
            if class_backgrounds > 0:
                chooser = np.random.default_rng((seed + 1, k, i))
                own = chooser.random() < class_backgrounds
                style = k % NUM_STYLES if own else int(chooser.integers(NUM_STYLES))
            video = render(motion, np.random.default_rng((seed, i)), height, width, frames, style)
            write_mp4(os.path.join(root, relative), video)
            rows["train" if i < train_per_class else "test"].append((relative, name))
    for split, entries in rows.items():
        with open(os.path.join(root, f"{split}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows(entries)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="an empty or new folder")
    parser.add_argument("--train-per-class", type=int_at_least(1), default=64)
    parser.add_argument("--test-per-class", type=int_at_least(1), default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--class-backgrounds",
        type=float,
        default=0.0,
        metavar="P",
        help="a control: each class's videos take the class's background style with "
        "probability P, so the appearance carries the class (default 0: it does not)",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.class_backgrounds <= 1.0:
        parser.error(f"--class-backgrounds {args.class_backgrounds}: must be in [0, 1]")
    if os.path.exists(args.root) and not os.path.isdir(args.root):
        parser.error(f"{args.root} is a file; give an empty or new folder")
    try:
        make_dataset(
            args.root,
            args.train_per_class,
            args.test_per_class,
            seed=args.seed,
            class_backgrounds=args.class_backgrounds,
        )
    except FileExistsError as err:
        parser.error(str(err))
    print(f"Wrote {len(MOTIONS)} classes into {args.root} (train.csv, test.csv)")


if __name__ == "__main__":
    main(sys.argv[1:])
