"""Video-level classification: undecodable videos, reports, validation-driven selection."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from unittest import mock

import pytest
import torch
from PIL import Image

from fima.checkpoint import Checkpointer
from fima.data.datasets import build_dataset
from fima.data.datasets.synthetic import synthetic_root
from fima.engine import DefaultTrainer, default_setup
from fima.evaluation import ClassificationEvaluator, LinearProbeEvaluator, RetrievalEvaluator
from fima.evaluation.inference import video_features
from fima.modeling import build_model
from fima.utils.events import EventStorage
from tests.evaluation.helpers import classifier_cfg


def test_undecodable_videos_are_listed_and_excluded(tmp_path) -> None:
    source = classifier_cfg()
    build_dataset(source, "test")  # generate the set, then work on a copy
    root = tmp_path / "data"
    shutil.copytree(synthetic_root(source), root)
    # One bad video in three: tolerated here, so that the listing can be checked.
    cfg = classifier_cfg(
        str(tmp_path / "out"), **{"DATA.ROOT": str(root), "DATA.MAX_BAD_FRACTION": 0.5}
    )
    broken = build_dataset(cfg, "test").records[1].path
    with open(broken, "wb") as f:
        f.write(b"not a video")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with EventStorage() as storage:  # as during training: the picture also goes to TensorBoard
        results = ClassificationEvaluator(cfg, "test", "test").evaluate(model)
    assert results["test/num_videos"] == 2 and results["test/bad_videos"] == 1
    report_dir = tmp_path / "out" / "inference" / "test"
    report = json.loads((report_dir / "classification.json").read_text())
    assert [b["path"] for b in report["bad_videos"]] == [broken]
    assert [v["index"] for v in report["videos"]] == [0, 2]
    assert sum(c["videos"] for c in report["per_class"]) == 2
    assert sum(map(sum, report["confusion_matrix"])) == 2
    assert (report_dir / "confusion_matrix.png").stat().st_size > 0
    ((name, image, _),) = storage.pop_images()
    width, height = Image.open(report_dir / "confusion_matrix.png").size
    assert name == "test/confusion_matrix" and image.shape == (3, height, width)
    # Retrieval and the feature probe count it too (one feature pass serves both).
    probe = LinearProbeEvaluator(cfg).evaluate(model)
    retrieval = RetrievalEvaluator(cfg).evaluate(model)
    assert probe["linear_probe/bad_videos"] == 1 == retrieval["retrieval/bad_videos"]
    assert retrieval["retrieval/num_queries"] == 2


class _FixedClipScores(torch.nn.Module):
    """Scores every video's first clip ``[1, 0, 0.55]`` and its second ``[0, 0.8, 0.55]``: the
    mean says class 2, the maximum or the first clip class 0, the second clip class 1."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))  # where the evaluator finds the device

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        videos, clips = batch["global"].shape[:2]
        assert clips == 2
        return torch.tensor([[1.0, 0.0, 0.55], [0.0, 0.8, 0.55]]).expand(videos, 2, 3)


def test_a_video_is_scored_by_the_mean_of_its_clips_scores(tmp_path) -> None:
    cfg = classifier_cfg(
        str(tmp_path / "out"), **{"TEST.NUM_CLIPS": 2, "TEST.NUM_SPATIAL_CROPS": 1}
    )
    results = ClassificationEvaluator(cfg, "test", "test").evaluate(_FixedClipScores())
    report_file = tmp_path / "out" / "inference" / "test" / "classification.json"
    report = json.loads(report_file.read_text())
    assert [v["prediction"] for v in report["videos"]] == [2, 2, 2]
    assert sorted(v["label"] for v in report["videos"]) == [0, 1, 2]
    assert results["test/video_top1"] == pytest.approx(100 / 3)
    # Clip by clip: class 0, then class 1, each right for one video of three.
    assert results["test/clip_top1"] == pytest.approx(100 / 3)


def test_a_videos_feature_is_the_mean_of_its_clips_features() -> None:
    model = mock.Mock()
    model.extract_features.side_effect = lambda clips: clips.flatten(1)[:, :4].float()
    clips = torch.arange(2 * 3 * 8, dtype=torch.uint8).view(2, 3, 8)  # [videos, clips, ...]
    features = video_features(model)(clips)["feature"]
    torch.testing.assert_close(features, clips[..., :4].float().mean(dim=1))


def test_validation_split_selects_the_best_weights_and_test_reports_the_last(tmp_path) -> None:
    cfg = classifier_cfg(
        str(tmp_path / "out"),
        **{
            "DATA.VALIDATION.FRACTION": 0.4,
            "TEST.EVAL_PERIOD": 2,
            "TEST.BEST_METRIC": "val/video_top1",
            "SOLVER.MAX_ITER": 4,
        },
    )
    cfg = default_setup(cfg, argparse.Namespace(resume=False, eval_only=False))
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    final = trainer.train()
    assert {"val/video_top1", "test/video_top1", "test/clip_top1"} <= set(final)
    assert final["val/num_videos"] == 6  # 2 of 5 training groups of each of 3 classes
    rows = [
        json.loads(line) for line in (tmp_path / "out" / "metrics.json").read_text().splitlines()
    ]
    evaluated = [r["iteration"] for r in rows if "val/video_top1" in r]
    assert evaluated == [1, 4]
    best = json.loads((tmp_path / "out" / "best" / "model_best.json").read_text())
    assert best["metric"] == "val/video_top1" and best["iteration"] in evaluated
    assert best["value"] == max(r["val/video_top1"] for r in rows if "val/video_top1" in r)
    # The best weights are a classifier checkpoint; resuming still picks the run's own state.
    fresh = build_model(cfg)
    Checkpointer(fresh, cfg.OUTPUT_DIR).load(str(tmp_path / "out" / "best" / "model_best.pth"))
    assert (tmp_path / "out" / "last_checkpoint").read_text() == "model_final.pth"
    assert os.path.isfile(tmp_path / "out" / "inference" / "val" / "classification.json")


def test_a_run_started_over_does_not_keep_an_earlier_runs_best_weights(tmp_path) -> None:
    """A run stopped before its first checkpoint and started again (another learning rate, say)
    took the earlier run's best/model_best.json as the value to beat: best/model_best.pth kept
    the earlier run's weights, presented as this run's best, unless this run beat them."""
    out = tmp_path / "out"

    def train(lr: float) -> None:
        cfg = classifier_cfg(
            str(out),
            **{
                "DATA.VALIDATION.FRACTION": 0.4,
                "TEST.EVAL_PERIOD": 2,
                "TEST.BEST_METRIC": "val/video_top1",
                "TEST.NUM_CLIPS": 1,
                "SOLVER.MAX_ITER": 2,
                "SOLVER.BASE_LR": lr,
            },
        )
        cfg = default_setup(cfg, argparse.Namespace(resume=True, eval_only=False))
        trainer = DefaultTrainer(cfg)
        trainer.resume_or_load(resume=True)
        trainer.train()

    train(0.01)
    first = (out / "best" / "model_best.pth").read_bytes()
    for name in ("model_0000001.pth", "model_final.pth", "last_checkpoint"):
        (out / name).unlink()  # as if stopped before its first checkpoint: nothing to resume
    train(0.5)
    best = torch.load(out / "best" / "model_best.pth", weights_only=True)
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert best["iteration"] == 2
    for key, value in final["model"].items():
        assert torch.equal(best["model"][key], value), key
    (kept,) = out.glob("best.*")
    assert (kept / "model_best.pth").read_bytes() == first


def test_feature_cache_key_follows_the_test_views() -> None:
    from fima.evaluation.retrieval import feature_cache_key
    from fima.modeling import build_model

    cfg = classifier_cfg()
    model = build_model(cfg)
    keys = {
        (clips, crops): feature_cache_key(
            classifier_cfg(**{"TEST.NUM_CLIPS": clips, "TEST.NUM_SPATIAL_CROPS": crops}),
            model,
            "test",
        )
        for clips, crops in ((2, 1), (2, 3), (6, 1))
    }
    assert len(set(keys.values())) == 3
    assert feature_cache_key(cfg, model, "test") == keys[(2, 1)]


def test_feature_cache_key_follows_the_backbone_not_the_head() -> None:
    """The key hashed the whole classifier: a linear probe with periodic retrieval, whose head
    trains while its backbone stays frozen, extracted and cached the same features again at
    every evaluation (a pass over both splits and two new files each time)."""
    from fima.evaluation.retrieval import feature_cache_key
    from fima.modeling import build_model

    cfg = classifier_cfg(**{"MODEL.CLASSIFIER.MODE": "linear"})
    model = build_model(cfg)
    before = feature_cache_key(cfg, model, "test")
    with torch.no_grad():
        model.head.fc.weight.add_(1.0)  # what a probe's steps change
    assert feature_cache_key(cfg, model, "test") == before
    with torch.no_grad():
        next(model.backbone.parameters()).add_(1.0)  # what fine-tuning changes
    assert feature_cache_key(cfg, model, "test") != before


def test_feature_cache_key_follows_the_precision_not_its_spelling() -> None:
    """ "auto" and "bfloat16" compute alike on a CPU; float32 features are other features."""
    from fima.evaluation.retrieval import feature_cache_key
    from fima.modeling import build_model

    model = build_model(classifier_cfg())

    def key(**overrides: object) -> str:
        return feature_cache_key(classifier_cfg(**overrides), model, "test")

    with mock.patch("fima.engine.train_loop.native_autocast", return_value=True):
        auto, bfloat16 = (
            key(**{"SOLVER.AMP.DTYPE": "auto"}),
            key(**{"SOLVER.AMP.DTYPE": "bfloat16"}),
        )
        assert auto == bfloat16
        assert key(**{"SOLVER.AMP.ENABLED": False}) != auto


def test_an_evaluation_keeps_the_reports_of_the_run_before_it(tmp_path) -> None:
    """--eval-only into a fine-tuning run's OUTPUT_DIR (of its best weights, say) rewrote
    inference/test/classification.json and its confusion matrix: the run's own final reports
    were gone, and nothing said which weights the files now there were of."""
    out = tmp_path / "out"
    cfg = default_setup(
        classifier_cfg(str(out), **{"SOLVER.MAX_ITER": 2}),
        argparse.Namespace(resume=False, eval_only=False),
    )
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    report = out / "inference" / "test" / "classification.json"
    written = report.read_text()
    assert json.loads(written)["num_clips"] == 2
    # Resuming the training run: its reports are its own, and stay where they are.
    default_setup(cfg.clone(), argparse.Namespace(resume=True, eval_only=False))
    assert report.read_text() == written and not list(out.glob("inference.*"))
    # --eval-only with other test views: the run's reports are kept beside the new ones, once
    # the evaluation writes its own (not before: an --eval-only that stops early moves nothing).
    evaluation = classifier_cfg(str(out), **{"TEST.NUM_CLIPS": 1})
    evaluation = default_setup(evaluation, argparse.Namespace(resume=False, eval_only=True))
    assert report.read_text() == written and not list(out.glob("inference.*"))
    model = build_model(evaluation)
    Checkpointer(model, str(out)).load(str(out / "model_final.pth"))
    DefaultTrainer.test(evaluation, model, ClassificationEvaluator(evaluation, "test", "test"))
    assert json.loads(report.read_text())["num_clips"] == 1
    (kept,) = out.glob("inference.*")
    assert (kept / "test" / "classification.json").read_text() == written
    assert (kept / "test" / "confusion_matrix.png").is_file()
    # Resuming the training run after that evaluation: the evaluation's reports are not the
    # training run's, and are kept when it evaluates (they were overwritten).
    evaluated = report.read_text()
    resumed = default_setup(cfg.clone(), argparse.Namespace(resume=True, eval_only=False))
    DefaultTrainer.test(resumed, model, ClassificationEvaluator(resumed, "test", "test"))
    assert json.loads(report.read_text())["num_clips"] == 2
    kept_evaluation = set(out.glob("inference.*")) - {kept}
    assert [(k / "test" / "classification.json").read_text() for k in kept_evaluation] == [
        evaluated
    ]
    # Resumed once more: now the reports are the training run's own, rewritten in place.
    again = default_setup(cfg.clone(), argparse.Namespace(resume=True, eval_only=False))
    DefaultTrainer.test(again, model, ClassificationEvaluator(again, "test", "test"))
    assert len(list(out.glob("inference.*"))) == 2
