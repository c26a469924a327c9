"""The independent motion dataset's control option: backgrounds that carry the class."""

from __future__ import annotations

import numpy as np
import pytest

from . import independent_motion
from .independent_motion import MOTIONS, NUM_STYLES, main, make_dataset


def _styles_drawn(tmp_path, monkeypatch, probability: float) -> dict[str, list]:
    drawn: dict[str, list] = {name: [] for name in MOTIONS}
    render = independent_motion.render
    by_motion = {motion: name for name, motion in MOTIONS.items()}

    def spy(motion, rng, height, width, frames, style=None):
        drawn[by_motion[motion]].append(style)
        return render(motion, rng, height, width, frames, style)

    monkeypatch.setattr(independent_motion, "render", spy)
    make_dataset(
        str(tmp_path / f"p{probability}"),
        train_per_class=3,
        test_per_class=1,
        height=16,
        width=20,
        frames=4,
        class_backgrounds=probability,
    )
    return drawn


def test_backgrounds_carry_the_class_only_when_asked(tmp_path, monkeypatch) -> None:
    assert all(
        styles == [None] * 4 for styles in _styles_drawn(tmp_path, monkeypatch, 0.0).values()
    )
    always = _styles_drawn(tmp_path, monkeypatch, 1.0)
    for k, name in enumerate(MOTIONS):
        assert always[name] == [k % NUM_STYLES] * 4


def test_the_styles_are_distinct_images() -> None:
    images = [
        independent_motion._styled_background(style, np.random.default_rng(0), 24, 32)
        for style in range(NUM_STYLES)
    ]
    assert all(image.shape == (24, 32, 3) for image in images)
    for a in range(NUM_STYLES):
        for b in range(a + 1, NUM_STYLES):
            assert not np.allclose(images[a], images[b]), (a, b)


def test_a_probability_outside_0_1_is_refused(tmp_path) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path / "d"), "--class-backgrounds", "1.5"])
    assert not (tmp_path / "d").exists()
