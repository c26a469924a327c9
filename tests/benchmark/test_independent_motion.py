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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--test-per-class", "-1"], "argument --test-per-class: must be >= 1, got -1"),
        (["--train-per-class", "0"], "argument --train-per-class: must be >= 1, got 0"),
    ],
)
def test_counts_below_one_are_refused(tmp_path, capsys, args: list[str], message: str) -> None:
    # They wrote a test.csv without a video, which the benchmark found out later.
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "d"), *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_a_folder_that_holds_a_dataset_or_a_file_is_a_one_line_error(tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.csv").write_text("the user's list\n")
    for root, message in (("file", "is a file"), ("d", "already holds train.csv")):
        with pytest.raises(SystemExit) as stop:
            main([str(tmp_path / root), "--train-per-class", "1", "--test-per-class", "1"])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert (tmp_path / "d" / "train.csv").read_text() == "the user's list\n"
