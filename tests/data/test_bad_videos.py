"""Bad input end to end: mini datasets in each official layout with bad files mixed in, loaded
through configs only; every bad file listed with its reason; training and testing finish."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

from fima.data import build as build_module
from fima.data import build_dataset, build_test_loader, build_train_loader
from fima.data.bad_videos import BadVideoTracker, TooManyBadVideosError, read_bad_videos
from fima.data.build import WindowClips, load_index
from fima.data.decoder import DecodeError
from fima.engine import DefaultTrainer, launch
from tests.conftest import tiny_cfg
from tests.data.bad_videos_worker import check_shares
from tests.data.layouts import BAD_KINDS, LAYOUTS

CLASSES = ["jump", "run"]
# Every kind of bad file, spread over the classes.
BAD = {kind: CLASSES[i % 2] for i, kind in enumerate(BAD_KINDS)}


def _dataset_cfg(tmp_path, dataset: str, **overrides: object):
    root = tmp_path / "data"
    LAYOUTS[dataset](str(root), CLASSES, 4, BAD)
    return tiny_cfg(
        str(tmp_path / "output"),
        **{
            "DATA.DATASET": dataset,
            "DATA.ROOT": str(root),
            "DATA.MAX_BAD_FRACTION": 0.6,
            "SOLVER.MAX_ITER": 2,
            **overrides,
        },
    )


def _listed_bad(cfg) -> dict[str, str]:
    return read_bad_videos(os.path.join(cfg.OUTPUT_DIR, "bad_videos.txt"))


def _check_listed(listed: dict[str, str], dataset: str, kinds) -> None:
    by_kind = {}
    for path, reason in listed.items():
        kind = next(k for k in BAD_KINDS if f"bad_{k}" in path)
        by_kind[kind] = reason
    for kind in kinds:
        assert kind in by_kind, f"{dataset}: the {kind} file is not in bad_videos.txt"
        assert re.search(BAD_KINDS[kind], by_kind[kind]), (kind, by_kind[kind])


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(LAYOUTS))
def test_training_and_testing_finish_and_list_every_bad_file(tmp_path, dataset: str) -> None:
    cfg = _dataset_cfg(tmp_path, dataset)
    expected = [k for k in BAD_KINDS if not (dataset == "Kinetics400" and k == "missing")]
    train = build_dataset(cfg, "train")
    assert len(train) == 2 * 3 + len(expected)
    assert train.class_names == CLASSES

    trainer = DefaultTrainer(cfg)
    trainer.train()
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    listed = _listed_bad(cfg)
    # The files that headers give away are listed as soon as the index is read.
    _check_listed(listed, dataset, [k for k in expected if k != "cut_payload"])

    # Testing over the same split: every video once, the bad ones invalid, all of them listed.
    cfg.DATA.TEST_SPLIT = "train"
    batches = list(build_test_loader(cfg))
    index = torch.cat([b["index"] for b in batches])
    valid = torch.cat([b["valid"] for b in batches])
    assert sorted(index.tolist()) == list(range(len(train)))
    invalid = {train[i].path for i in index[~valid].tolist()}
    listed = _listed_bad(cfg)
    assert invalid == set(listed) and len(invalid) == len(expected)
    _check_listed(listed, dataset, expected)
    for batch in batches:
        assert batch["global"].shape[1:] == (2, 3, 8, 32, 32)
        assert batch["label"].tolist() == [train[i].label for i in batch["index"].tolist()]
        assert not batch["global"][~batch["valid"]].any()


def test_a_video_that_fails_to_decode_is_replaced_in_training(tmp_path) -> None:
    cfg = _dataset_cfg(tmp_path, "VideoList")
    dataset = build_dataset(cfg, "train")
    infos, bad = load_index(cfg, dataset)
    cut = next(i for i, r in enumerate(dataset) if "bad_cut_payload" in r.path)
    assert infos[cut] is not None  # its header is fine: only decoding finds it out
    clips = WindowClips(dataset, infos, cfg, ("global",), num_windows=2, seed=0)
    sample = clips[cut, 0, 0]
    assert sample["index"] != cut and infos[int(sample["index"])] is not None
    assert [path for path, _ in sample["bad_videos"]] == [dataset[cut].path]
    assert sample["global"].shape == (2, 3, 8, 32, 32)
    assert sample["label"] == dataset[int(sample["index"])].label


@pytest.mark.parametrize("retries", [0, 1])
def test_a_decode_that_fails_once_is_retried_before_the_video_is_given_up(
    tmp_path, monkeypatch, retries: int
) -> None:
    """DATA.DECODE_RETRIES more tries (a read that fails once on a network disk) before a
    video is replaced in training or left out of testing, and listed as bad."""
    cfg = _dataset_cfg(tmp_path, "VideoList", **{"DATA.DECODE_RETRIES": retries})
    dataset = build_dataset(cfg, "train")
    infos, _ = load_index(cfg, dataset)
    good = next(i for i, r in enumerate(dataset) if "bad_" not in r.path)
    decode = build_module.decode_frames
    failed = []

    def fails_once(path: str, *args: object, **kwargs: object) -> torch.Tensor:
        if path == dataset[good].path and path not in failed:
            failed.append(path)
            raise DecodeError("decoding failed: [Errno 5] Input/output error")
        return decode(path, *args, **kwargs)

    monkeypatch.setattr(build_module, "decode_frames", fails_once)
    sample = WindowClips(dataset, infos, cfg, ("global",), num_windows=2, seed=0)[good, 0, 0]
    failed.clear()
    test_sample = build_module.TestClips(dataset, infos, cfg)[good]
    listed = [(dataset[good].path, "decoding failed: [Errno 5] Input/output error")]
    if retries:
        assert int(sample["index"]) == good and sample["bad_videos"] == []
        assert bool(test_sample["valid"]) and test_sample["bad_videos"] == []
    else:
        assert int(sample["index"]) != good and sample["bad_videos"] == listed
        assert not bool(test_sample["valid"]) and test_sample["bad_videos"] == listed


def test_too_many_bad_videos_stop_the_run_with_the_list_written(tmp_path) -> None:
    cfg = _dataset_cfg(tmp_path, "UCF101", **{"DATA.MAX_BAD_FRACTION": 0.1})
    with pytest.raises(TooManyBadVideosError, match=r"DATA.MAX_BAD_FRACTION=0.1.*bad_videos.txt"):
        build_train_loader(cfg)
    assert len(_listed_bad(cfg)) == len(BAD_KINDS) - 1  # all but the one decoding finds


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_of_undecodable_videos_stops_with_the_list_written(
    tmp_path, monkeypatch, workers: int
) -> None:
    """Videos whose headers are fine but that never decode (a half-copied dataset): the sample
    that runs out of replacements once ended the run with a DecodeError traceback from the
    loader worker, and bad_videos.txt did not list what decoding had found."""
    cfg = _dataset_cfg(
        tmp_path, "VideoList", **{"DATA.NUM_WORKERS": workers, "DATA.MAX_BAD_FRACTION": 0.9}
    )

    def cut(path: str, *args: object, **kwargs: object) -> torch.Tensor:
        raise DecodeError("truncated: decoding ends at frame 3 of the 40 that the header promises")

    monkeypatch.setattr(build_module, "decode_frames", cut)  # forked workers inherit it
    loader = build_train_loader(cfg)
    with pytest.raises(TooManyBadVideosError, match=r"10 videos in a row .*bad_videos.txt"):
        next(iter(loader))
    truncated = [p for p, reason in _listed_bad(cfg).items() if reason.startswith("truncated")]
    assert len([p for p in truncated if "bad_" not in p]) >= 2  # the good files that failed


def test_tracker_merges_into_the_file_and_counts(tmp_path) -> None:
    path = str(tmp_path / "bad_videos.txt")
    first = BadVideoTracker(0.5, path, min_seen=4)
    first.record(3, [("/a.mp4", "cannot open")])
    first.write()
    second = BadVideoTracker(0.5, path, min_seen=4)
    second.record(2, [("/b.mp4", "no video stream"), ("/a.mp4", "cannot open")])
    second.write()
    assert read_bad_videos(path) == {"/a.mp4": "cannot open", "/b.mp4": "no video stream"}
    second.check()  # 2 of 2 but fewer than min_seen
    second.record(2, [("/b.mp4", "no video stream")])
    with pytest.raises(TooManyBadVideosError, match="3 of 4 videos"):
        second.check()
    np.testing.assert_equal(
        sorted(os.listdir(tmp_path)), [".bad_videos.txt.lock", "bad_videos.txt"]
    )


def test_a_share_of_bad_videos_equal_to_the_limit_is_tolerated() -> None:
    """DATA.MAX_BAD_FRACTION is the largest tolerated share: at it the run goes on, above it
    it stops."""
    tracker = BadVideoTracker(0.5, None, min_seen=4)
    tracker.record(4, [("/a.mp4", "cannot open"), ("/b.mp4", "cannot open")])
    tracker.check()  # 2 of 4
    tracker.record(1, [("/c.mp4", "cannot open")])
    with pytest.raises(TooManyBadVideosError, match="3 of 5 videos read were bad"):
        tracker.check()


def test_a_split_without_one_usable_video_is_named_at_start_up(tmp_path) -> None:
    root = tmp_path / "data"
    for i, kind in enumerate(("zero", "text")):
        (root / "train" / "walk").mkdir(parents=True, exist_ok=True)
        (root / "train" / "walk" / f"{i}.mp4").write_bytes(b"" if kind == "zero" else b"text")
    cfg = tiny_cfg(str(tmp_path / "out"), **{"DATA.DATASET": "VideoList", "DATA.ROOT": str(root)})
    dataset = build_dataset(cfg, "train")
    with pytest.raises(TooManyBadVideosError, match=r"No usable video in VideoList\(split="):
        load_index(cfg, dataset)


def test_the_budget_is_that_of_all_processes_and_stops_them_together(tmp_path) -> None:
    """Counted per process, one bad video in one rank's share stopped a two-process run (that
    rank alone, the other then failing on a closed connection) that one process trains."""
    launch(check_shares, 2, dist_url="auto", args=(str(tmp_path),))
    for rank in (0, 1):
        said = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert said[0] == "ok"
        assert said[1].startswith("3 of 50 videos read by the 2 processes were bad (more than")
