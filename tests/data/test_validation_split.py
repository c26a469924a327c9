"""The validation split carved from train: by group, per class, seeded, disjoint from training."""

from __future__ import annotations

import logging
from collections import defaultdict

import pytest

from fima.config import ConfigError
from fima.data.datasets import VideoDataset, VideoRecord, build_dataset
from fima.data.datasets.validation import carve_validation_split, held_out_groups
from fima.utils import logger as fima_logger
from tests.conftest import tiny_cfg


def _ucf_like(groups_per_class: int = 7, clips: int = 4) -> VideoDataset:
    records = [
        VideoRecord(f"/d/{c}/v_{c}_g{g:02d}_c{k:02d}.avi", label, f"{c}_g{g:02d}")
        for label, c in enumerate(("Archery", "Bowling", "Diving"))
        for g in range(1, groups_per_class + 1)
        for k in range(1, clips + 1)
    ]
    return VideoDataset(
        records, ["Archery", "Bowling", "Diving"], name="UCF101", split="train", root="/d"
    )


def test_groups_never_straddle_and_every_class_is_held_out() -> None:
    cfg = tiny_cfg(**{"DATA.VALIDATION.FRACTION": 0.3})
    full = _ucf_like()
    val = carve_validation_split(cfg, "val", full)
    train = carve_validation_split(cfg, "train", full)
    assert val.split == "val" and train.split == "train"
    assert {r.path for r in val.records}.isdisjoint({r.path for r in train.records})
    assert len(val) + len(train) == len(full)
    assert {r.group for r in val.records}.isdisjoint({r.group for r in train.records})
    per_class = defaultdict(set)
    for record in val.records:
        per_class[record.label].add(record.group)
    assert all(len(per_class[label]) == 2 for label in range(3))  # round(0.3 * 7) groups each
    assert val.class_names == full.class_names


def test_the_carve_is_logged_once(caplog, monkeypatch) -> None:
    # It was logged at every build of either part: 8 times in one fine-tuning run.
    monkeypatch.setattr(fima_logger, "_said_once", set())  # as in a fresh process
    cfg = tiny_cfg(**{"DATA.VALIDATION.FRACTION": 0.25, "DATA.VALIDATION.SEED": 11})
    full = _ucf_like(groups_per_class=5)
    with caplog.at_level(logging.INFO, logger="fima"):
        for split in ("val", "train", "val", "train"):
            carve_validation_split(cfg, split, full)
    assert sum("Validation split carved" in r.getMessage() for r in caplog.records) == 1


def test_the_draw_is_seeded() -> None:
    groups = [f"g{i}" for i in range(20)]
    labels = [0] * 20
    assert held_out_groups(groups, labels, 0.25, 0) == held_out_groups(groups, labels, 0.25, 0)
    assert held_out_groups(groups, labels, 0.25, 0) != held_out_groups(groups, labels, 0.25, 1)
    assert held_out_groups(["only"], [0], 0.5, 0) == set()  # a lone group stays in training


def test_build_dataset_hook(tmp_path) -> None:
    cfg = tiny_cfg(str(tmp_path), **{"DATA.VALIDATION.FRACTION": 0.25})
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    plain = build_dataset(tiny_cfg(str(tmp_path)), "train")
    assert len(train) + len(val) == len(plain) and len(val) > 0
    assert {r.path for r in train.records} | {r.path for r in val.records} == {
        r.path for r in plain.records
    }
    test = build_dataset(cfg, "test")
    assert {r.path for r in test.records}.isdisjoint({r.path for r in val.records})
    with pytest.raises(ConfigError, match="DATA.VALIDATION.FRACTION"):
        build_dataset(tiny_cfg(str(tmp_path), **{"DATA.VALIDATION.FRACTION": 1.0}), "val")
