"""SyntheticMotion: UCF101 layout, caching, and class-independent appearance."""

from __future__ import annotations

import os

import numpy as np

from fima.data import build_dataset
from fima.data.datasets.synthetic import MOTIONS, render_video, synthetic_root
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
