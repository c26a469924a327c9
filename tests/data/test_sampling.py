"""Which frames a clip takes (fima/data/sampling.py): random windows, views, uniform test clips."""

from __future__ import annotations

import numpy as np
import pytest

from fima.data.sampling import (
    random_window_start,
    uniform_clip_starts,
    view_positions,
    window_indices,
)


def test_random_windows_start_anywhere_the_window_fits() -> None:
    rng = np.random.default_rng(0)
    # 40 frames, a window of 32: starts 0..8, the last one included (the window ends on the
    # video's last frame).
    starts = [random_window_start(40, 32, rng) for _ in range(500)]
    assert set(starts) == set(range(9))
    # A video no longer than the window starts at 0 (its indices are clamped).
    assert {random_window_start(n, 32, rng) for n in (1, 20, 32) for _ in range(20)} == {0}


def test_window_indices_repeat_the_last_frame_of_a_short_video() -> None:
    np.testing.assert_array_equal(window_indices(3, 4, 40), [3, 4, 5, 6])
    np.testing.assert_array_equal(window_indices(0, 6, 4), [0, 1, 2, 3, 3, 3])


def test_views_take_every_rate_th_frame_or_the_halves_at_half_the_rate() -> None:
    (whole,) = view_positions("global", 4, 4)
    np.testing.assert_array_equal(whole, [0, 4, 8, 12])
    first, second = view_positions("local", 4, 4)
    np.testing.assert_array_equal(first, [0, 2, 4, 6])
    np.testing.assert_array_equal(second, [8, 10, 12, 14])
    with pytest.raises(ValueError, match="even INPUT.SAMPLING_RATE, got 3"):
        view_positions("local", 4, 3)
    with pytest.raises(ValueError, match="Unknown view 'dense'"):
        view_positions("dense", 4, 2)


def test_uniform_clips_cover_the_video_and_one_clip_is_centred() -> None:
    # 100 frames, a window of 16: starts from 0 to 84.
    assert uniform_clip_starts(100, 16, 1) == [42]
    assert uniform_clip_starts(100, 16, 2) == [0, 84]
    assert uniform_clip_starts(100, 16, 5) == [0, 21, 42, 63, 84]
    # Shorter than the window: every clip starts at 0.
    assert uniform_clip_starts(10, 16, 1) == [0]
    assert uniform_clip_starts(10, 16, 3) == [0, 0, 0]
