"""An evaluation that could not run stops a training run at start-up, not after training."""

from __future__ import annotations

import os

import pytest

from fima.config import ConfigError
from fima.data import build_dataset
from fima.engine import DefaultTrainer
from fima.evaluation import build_classifier_evaluator
from fima.evaluation.evaluator import check_evaluator
from fima.evaluation.motion_sensitivity import MotionSensitivityEvaluator
from fima.modeling import build_model
from tests.conftest import tiny_cfg
from tests.evaluation.helpers import EVAL_DATA, classifier_cfg


@pytest.fixture(scope="module")
def videos() -> list[tuple[str, str]]:
    """(path, class name) of the synthetic set's training videos."""
    dataset = build_dataset(tiny_cfg(**EVAL_DATA), "train")
    return [(r.path, dataset.class_names[r.label]) for r in dataset.records]


def _video_list(root, videos, splits: dict[str, bool]) -> str:
    """A VideoList root: for each split, the videos in class folders (True) or unlabelled."""
    for split, labelled in splits.items():
        for i, (path, name) in enumerate(videos):
            folder = root / split / name if labelled else root / split
            folder.mkdir(parents=True, exist_ok=True)
            os.symlink(path, folder / f"{i}.avi")
    return str(root)


def _checkpoints(output_dir) -> list[str]:
    return [name for name in os.listdir(output_dir) if name.endswith(".pth")]


def test_a_missing_test_split_stops_a_linear_probe_before_training(tmp_path, videos) -> None:
    root = _video_list(tmp_path / "data", videos, {"train": True})
    cfg = classifier_cfg(
        str(tmp_path / "out"),
        **{"MODEL.CLASSIFIER.MODE": "linear", "DATA.DATASET": "VideoList", "DATA.ROOT": root},
    )
    with pytest.raises(FileNotFoundError, match="No list file or folder for split 'test'"):
        DefaultTrainer(cfg)
    assert not os.path.isdir(tmp_path / "out") or not _checkpoints(tmp_path / "out")


def test_the_knn_monitor_on_unlabelled_videos_stops_pretraining_at_start_up(
    tmp_path, videos
) -> None:
    root = _video_list(tmp_path / "data", videos, {"train": False, "test": True})
    cfg = tiny_cfg(
        str(tmp_path / "out"),
        **{"DATA.DATASET": "VideoList", "DATA.ROOT": root, "TEST.KNN.ENABLED": True},
    )
    with pytest.raises(ValueError, match=r"kNN monitor .* needs labels, but VideoList\(split="):
        DefaultTrainer(cfg)


def test_retrieval_of_unlabelled_queries_is_an_error_not_zero_recall(tmp_path, videos) -> None:
    # check() is what a training run and --eval-only call before anything else.
    root = _video_list(tmp_path / "data", videos[:4], {"train": True, "test": False})
    cfg = classifier_cfg(
        str(tmp_path / "out"),
        **{
            "DATA.DATASET": "VideoList",
            "DATA.ROOT": root,
            "MODEL.CLASSIFIER.NUM_CLASSES": 3,
            "TEST.EVALUATORS": ("retrieval",),
        },
    )
    model = build_model(cfg).eval()
    with pytest.raises(ConfigError, match=r"^RetrievalEvaluator needs labels, but VideoList\(spl"):
        check_evaluator(build_classifier_evaluator(cfg), model)
    with pytest.raises(ConfigError, match=r"name a labelled split in DATA\.(TEST|TRAIN)_SPLIT$"):
        check_evaluator(build_classifier_evaluator(cfg), model)


def test_motion_sensitivity_of_unlabelled_videos_leaves_out_only_the_static_probe(
    tmp_path, videos
) -> None:
    root = _video_list(tmp_path / "data", videos[:4], {"train": False, "test": False})
    cfg = classifier_cfg(
        str(tmp_path / "out"),
        **{"DATA.DATASET": "VideoList", "DATA.ROOT": root, "MODEL.CLASSIFIER.NUM_CLASSES": 3},
    )
    results = MotionSensitivityEvaluator(cfg).evaluate(build_model(cfg).eval())
    assert sorted(results) == [
        "motion_sensitivity/frozen_similarity",
        "motion_sensitivity/instance_R@1",
        "motion_sensitivity/num_videos",
    ]
    assert results["motion_sensitivity/num_videos"] == 4.0
