"""SyntheticMotion: UCF101 layout, caching, and class-independent appearance."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fima.config import ConfigError, validate_cfg
from fima.data import build_dataset
from fima.data.datasets.synthetic import (
    MOTIONS,
    MotionParams,
    object_positions,
    paint_distractors,
    render_video,
    synthetic_root,
)
from fima.data.decoder import probe_video
from tests.conftest import tiny_cfg


def test_layout_lists_and_labels() -> None:
    cfg = tiny_cfg()
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    root = synthetic_root(cfg)
    assert os.path.isfile(os.path.join(root, "ucfTrainTestlist", "classInd.txt"))
    assert train.class_names == sorted(cfg.DATA.SYNTHETIC.CLASSES)
    assert len(train) == 4 * 4 and len(test) == 4 * 2
    assert {r.group for r in train}.isdisjoint({r.group for r in test})
    for record in train:
        assert record.path.endswith(".avi") and os.path.isfile(record.path)
        assert train.class_names[record.label] in record.path
    info = probe_video(train[0].path)
    assert (info.num_frames, info.height, info.width) == (40, 48, 64)


def test_second_use_reads_the_cache() -> None:
    cfg = tiny_cfg()
    build_dataset(cfg, "train")
    marker = os.path.join(synthetic_root(cfg), "settings.json")
    before = os.path.getmtime(marker)
    build_dataset(cfg, "test")
    assert os.path.getmtime(marker) == before


def test_other_settings_get_another_folder() -> None:
    assert synthetic_root(tiny_cfg()) != synthetic_root(tiny_cfg(**{"DATA.SYNTHETIC.SEED": 1}))


def test_a_root_generated_with_other_settings_is_refused_not_read(tmp_path) -> None:
    cfg = tiny_cfg(**{"DATA.ROOT": str(tmp_path / "mine")})
    build_dataset(cfg, "train")
    listing = sorted(p.name for p in (tmp_path / "mine" / "UCF-101").iterdir())
    other = tiny_cfg(**{"DATA.ROOT": str(tmp_path / "mine"), "DATA.SYNTHETIC.SEED": 7})
    with pytest.raises(FileExistsError, match=r"other DATA.SYNTHETIC settings \(SEED 0 there, 7"):
        build_dataset(other, "train")
    assert sorted(p.name for p in (tmp_path / "mine" / "UCF-101").iterdir()) == listing
    # Start-up validation says so already, so that a run stops in one line, writing nothing.
    with pytest.raises(ConfigError, match=r"DATA.ROOT: .*other DATA.SYNTHETIC settings \(SEED 0"):
        validate_cfg(other)
    validate_cfg(cfg)


def test_a_root_of_other_files_is_refused_at_start_up(tmp_path) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"")
    cfg = tiny_cfg(**{"DATA.ROOT": str(tmp_path / "videos")})
    with pytest.raises(ConfigError, match=r"DATA.ROOT: .*videos exists, is not empty and is not"):
        validate_cfg(cfg)
    validate_cfg(tiny_cfg(**{"DATA.ROOT": str(tmp_path / "new")}))


def test_a_cache_that_cannot_be_written_is_refused_at_start_up(tmp_path, monkeypatch) -> None:
    # A read-only FIMA_CACHE ended the run in os.makedirs's OSError traceback.
    blocker = tmp_path / "cache_file"
    blocker.write_text("")
    monkeypatch.setenv("FIMA_CACHE", str(blocker / "cache"))
    with pytest.raises(ConfigError, match=r"generated into .* is a file; set FIMA_CACHE"):
        validate_cfg(tiny_cfg())
    read_only = str(tmp_path / "read_only")
    os.mkdir(read_only)
    monkeypatch.setenv("FIMA_CACHE", read_only)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: p != read_only and real_access(p, mode))
    with pytest.raises(ConfigError, match=r"but .*read_only cannot be written; set FIMA_CACHE"):
        validate_cfg(tiny_cfg())
    with pytest.raises(ConfigError, match=r"cannot be written; set DATA.ROOT to a folder"):
        validate_cfg(tiny_cfg(**{"DATA.ROOT": os.path.join(read_only, "mine")}))
    # A complete dataset is read, never written: a read-only cache that holds it is fine.
    monkeypatch.undo()
    cfg = tiny_cfg(**{"DATA.ROOT": str(tmp_path / "done")})
    build_dataset(cfg, "train")
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    validate_cfg(cfg)


def test_appearance_does_not_depend_on_the_class() -> None:
    cfg = tiny_cfg(**{"DATA.SYNTHETIC.NOISE": 0.0})
    videos = {
        name: render_video(MOTIONS[name], np.random.default_rng(7), cfg)
        for name in ("SlideHorizontal", "SlideUp", "Circle")
    }
    # Same draws, different motion: the frames differ only where the object moved, and the
    # pixels that never change (the background) are the same for every class.
    still = {name: (video == video[0]).all(axis=(0, 3)) for name, video in videos.items()}
    common = still["SlideHorizontal"] & still["SlideUp"] & still["Circle"]
    assert common.mean() > 0.3
    reference = videos["SlideHorizontal"][0][common]
    for video in videos.values():
        assert np.array_equal(video[0][common], reference)
    # And the motion differs between classes.
    assert not np.array_equal(videos["SlideHorizontal"], videos["SlideUp"])


def test_the_object_stays_whole_inside_the_frame() -> None:
    # The fastest and widest draws the settings allow, for every motion: a path longer than the
    # frame is slowed down, and the start keeps every position inside (no wrapping, no clipping).
    height, width, frames, size = 48, 64, 40, 20
    for name, motion in MOTIONS.items():
        for seed in range(20):
            rng = np.random.default_rng(seed)
            params = MotionParams(speed=8.0, radius=30.0, period=10.0, phase=rng.uniform(0, 6))
            lefts, tops = object_positions(motion, params, size, frames, height, width, rng)
            assert lefts.shape == tops.shape == (frames,)
            assert lefts.min() >= 0 and lefts.max() <= width - size, name
            assert tops.min() >= 0 and tops.max() <= height - size, name
            if name != "Still":
                assert np.ptp(lefts) + np.ptp(tops) > 0, name


def test_periodic_motions_repeat_within_a_clip() -> None:
    # A clip of 8 frames at sampling rate 2 covers 16 frames: a shake there goes back and forth
    # (its vertical velocity changes sign), a slide does not.
    params = MotionParams(speed=2.0, radius=10.0, period=12.0, phase=0.3)
    t = np.arange(16, dtype=np.float64)
    _, shake = MOTIONS["ShakeVertical"](t, params)
    _, slide = MOTIONS["SlideDown"](t, params)
    assert (np.diff(shake) > 0).any() and (np.diff(shake) < 0).any()
    assert (np.diff(slide) > 0).all()


def test_distractors_are_painted() -> None:
    rng = np.random.default_rng(3)
    background = np.full((48, 64, 3), 0.5)
    paint_distractors(background, 3, (0.25, 0.4), rng)
    changed = (background != 0.5).any(axis=2).mean()
    # Three shapes of 7-12 px sides (0.6 x 25-40% of 48) on 48 x 64, partly cut by the border.
    assert 0.02 < changed < 0.25
    none = np.full((48, 64, 3), 0.5)
    paint_distractors(none, 0, (0.25, 0.4), rng)
    assert (none == 0.5).all()
