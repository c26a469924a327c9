"""Evaluation across processes counts every video once: 2 gloo processes equal 1 process."""

from __future__ import annotations

import json
import os

import pytest

from fima.engine import launch
from tests.evaluation.dist_worker import evaluate_test_split, statistics_seen_by_an_evaluation
from tests.evaluation.helpers import classifier_cfg


@pytest.mark.slow
def test_two_processes_give_the_one_process_video_accuracy_on_an_odd_test_set(tmp_path) -> None:
    runs = {}
    for world in (1, 2):
        cfg = classifier_cfg(
            str(tmp_path / f"world{world}"),
            **{"SOLVER.AMP.ENABLED": False, "TEST.NUM_CLIPS": 3, "TEST.IMS_PER_BATCH": 2},
        )
        os.makedirs(cfg.OUTPUT_DIR)
        launch(evaluate_test_split, world, dist_url="auto", args=(cfg,))
        with open(os.path.join(cfg.OUTPUT_DIR, "ranks.json")) as f:
            ranks = json.load(f)
        with open(os.path.join(cfg.OUTPUT_DIR, "inference", "test", "classification.json")) as f:
            report = json.load(f)
        assert ranks["world_size"] == world
        assert all(r == ranks["results"][0] for r in ranks["results"])  # every rank agrees
        runs[world] = (ranks["results"][0], report)
    (one, one_report), (two, two_report) = runs[1], runs[2]
    assert one["test/num_videos"] == two["test/num_videos"] == 3  # odd: 2 + 1 across ranks
    assert two["test/video_top1"] == one["test/video_top1"]
    assert two["test/clip_top1"] == one["test/clip_top1"]
    assert [v["index"] for v in two_report["videos"]] == [0, 1, 2]
    assert two_report["videos"] == one_report["videos"]
    assert two_report["confusion_matrix"] == one_report["confusion_matrix"]


def test_every_rank_evaluates_with_the_statistics_the_checkpoints_hold(tmp_path) -> None:
    """Each rank keeps its own BatchNorm statistics while training and the checkpoints hold rank
    0's: an evaluation during a two-process run scored rank 1's share of the videos with rank
    1's, so its figures belonged to no saved model (video top-1 4.76 against 9.52 for
    --eval-only of model_final.pth)."""
    launch(statistics_seen_by_an_evaluation, 2, dist_url="auto", args=(str(tmp_path),))
    for rank in (0, 1):
        said = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert said == {"seen": 1.0, "after": float(rank + 1)}  # its own again afterwards
