"""Which frames a clip takes: pretraining windows, their views, and uniform test clips.

A *window* is ``NUM_FRAMES * SAMPLING_RATE`` consecutive frames. Its views (RECIPE.md §1):

- ``global``: every ``SAMPLING_RATE``-th frame (NUM_FRAMES frames);
- ``local``: the two halves of the window, each subsampled to NUM_FRAMES frames (stride
  ``SAMPLING_RATE / 2``; consecutive frames for the recipe's stride 2).

A video shorter than a window clamps the indices to its last frame (repeats it) and is kept.
"""

from __future__ import annotations

import numpy as np

VIEWS = ("global", "local")


def random_window_start(num_frames: int, window: int, rng: np.random.Generator) -> int:
    """A uniformly random start so that the window fits.

    Args:
        num_frames: frames in the video.
        window: frames in the window.
        rng: the sample's generator.

    Returns:
        A start in ``[0, num_frames - window]``; 0 if the video is shorter than the window.
    """
    return int(rng.integers(0, max(num_frames - window, 0) + 1))


def window_indices(start: int, window: int, num_frames: int) -> np.ndarray:
    """The frame indices of a window, clamped to the video.

    Args:
        start: the window's first frame.
        window: frames in the window.
        num_frames: frames in the video.

    Returns:
        ``[window]`` int, ``start .. start + window - 1``, each at most ``num_frames - 1``.
    """
    return np.minimum(np.arange(start, start + window), max(num_frames - 1, 0))


def view_positions(view: str, num_frames: int, sampling_rate: int) -> list[np.ndarray]:
    """Positions inside a window that each clip of ``view`` takes.

    Args:
        view: ``"global"`` or ``"local"``.
        num_frames: ``INPUT.NUM_FRAMES``.
        sampling_rate: ``INPUT.SAMPLING_RATE`` (even for ``local``).

    Returns:
        One array ``[num_frames]`` per clip of the view: one for ``global``, two for ``local``.

    Raises:
        ValueError: an unknown view, or ``local`` with an odd sampling rate.
    """
    window = num_frames * sampling_rate
    if view == "global":
        return [np.arange(0, window, sampling_rate)]
    if view == "local":
        if sampling_rate % 2:
            raise ValueError(f"local views need an even INPUT.SAMPLING_RATE, got {sampling_rate}")
        half = window // 2
        stride = sampling_rate // 2
        return [np.arange(h * half, (h + 1) * half, stride) for h in range(2)]
    raise ValueError(f"Unknown view {view!r}; known views: {VIEWS}")


def uniform_clip_starts(num_frames: int, window: int, num_clips: int) -> list[int]:
    """Evenly spaced window starts covering the video from start to end.

    Args:
        num_frames: frames in the video.
        window: frames in a window.
        num_clips: windows wanted.

    Returns:
        ``num_clips`` starts: the middle one for a single clip, else from 0 to
        ``num_frames - window`` (all 0 for a video shorter than a window).
    """
    last_start = max(num_frames - window, 0)
    if num_clips == 1:
        return [last_start // 2]
    return [int(round(s)) for s in np.linspace(0, last_start, num_clips)]
