"""``TEST.*`` keys of the evaluators: which ones run, retrieval, the kNN monitor, selection."""

from __future__ import annotations

from fima.config.config import CfgNode
from fima.config.config import CfgNode as CN

# Evaluators that VideoClassifier can run (TEST.EVALUATORS).
CLASSIFIER_EVALUATORS = ("classification", "retrieval", "linear_probe", "motion_sensitivity")


def add_evaluation_config(cfg: CfgNode) -> None:
    """Evaluation keys under ``TEST``."""
    # What VideoClassifier evaluates: "classification" (clip and video accuracy on the test
    # split, and on the validation split when one is carved), "retrieval" and/or "linear_probe"
    # (logistic regression on the frozen features; fima.evaluation.linear_probe), and/or
    # "motion_sensitivity" (appearance against motion in the frozen features, on the test split,
    # and a linear probe of motion-frozen clips fit on the training split;
    # fima.evaluation.motion_sensitivity).
    cfg.TEST.EVALUATORS = ("classification",)
    # A validation metric ("val/video_top1", ...) whose best value is kept as
    # OUTPUT_DIR/best/model_best.pth during training. Empty: no selection; the last epoch is the
    # result (RECIPE.md §9: never select on the test split).
    cfg.TEST.BEST_METRIC = ""

    cfg.TEST.RETRIEVAL = CN()
    # Recall@k reported: a hit when any of the k nearest training videos has the query's class.
    cfg.TEST.RETRIEVAL.TOPK = (1, 5, 10, 20, 50)
    # Subtract each set's mean feature before the cosine similarity (FAME's protocol; each split
    # then needs at least 2 videos).
    cfg.TEST.RETRIEVAL.CENTER = True
    # Keep the video features in OUTPUT_DIR/features, keyed by the weights, the config and the
    # videos, so that another metric on the same model costs no second pass.
    cfg.TEST.RETRIEVAL.CACHE_FEATURES = True

    cfg.TEST.LINEAR_PROBE = CN()
    # L2 penalty of the feature linear probe (on standardised features; mean loss + wd ||W||^2).
    cfg.TEST.LINEAR_PROBE.WEIGHT_DECAY = 1e-3

    # Online weighted-kNN monitor of a pretraining run (MoCo, FIMA): every TEST.EVAL_PERIOD
    # iterations the query encoder embeds labelled videos; test videos are classified by their
    # K nearest training videos (Wu et al., 2018).
    cfg.TEST.KNN = CN()
    cfg.TEST.KNN.ENABLED = False
    cfg.TEST.KNN.K = 200
    cfg.TEST.KNN.TEMPERATURE = 0.07
    # Training videos that form the memory bank, and test videos that query it (0: all). The
    # subsets are drawn once with a fixed seed, so every point of the curve uses the same videos.
    cfg.TEST.KNN.NUM_TRAIN = 0
    cfg.TEST.KNN.NUM_TEST = 0
    # Centre-cropped clips per video, averaged (the monitor is meant to be cheap).
    cfg.TEST.KNN.NUM_CLIPS = 1


def validate_classifier_evaluation(cfg: CfgNode) -> None:
    """Checks of ``TEST.EVALUATORS``, ``TEST.BEST_METRIC`` and ``TEST.RETRIEVAL``."""
    from fima.config.validation import require

    evaluators = tuple(cfg.TEST.EVALUATORS)
    require(
        bool(evaluators) and all(e in CLASSIFIER_EVALUATORS for e in evaluators),
        "TEST.EVALUATORS",
        f"must name one or more of {CLASSIFIER_EVALUATORS}, got {evaluators}",
    )
    require(len(set(evaluators)) == len(evaluators), "TEST.EVALUATORS", "names an evaluator twice")
    require(
        "motion_sensitivity" not in evaluators or cfg.TEST.NUM_CLIPS >= 2,
        "TEST.NUM_CLIPS",
        "must be >= 2 for the motion_sensitivity evaluator (it compares a video's first and last "
        f"clips), got {cfg.TEST.NUM_CLIPS}",
    )
    require(
        "motion_sensitivity" not in evaluators or cfg.TEST.NUM_SPATIAL_CROPS == 1,
        "TEST.NUM_SPATIAL_CROPS",
        "must be 1 for the motion_sensitivity evaluator (its first and last views must be the "
        f"same crop of two clips), got {cfg.TEST.NUM_SPATIAL_CROPS}",
    )
    topk = tuple(cfg.TEST.RETRIEVAL.TOPK)
    require(
        bool(topk) and all(k > 0 for k in topk),
        "TEST.RETRIEVAL.TOPK",
        f"must be positive integers, got {topk}",
    )
    require(
        cfg.TEST.LINEAR_PROBE.WEIGHT_DECAY >= 0, "TEST.LINEAR_PROBE.WEIGHT_DECAY", "must be >= 0"
    )
    metric = cfg.TEST.BEST_METRIC
    if metric:
        require(
            metric.startswith("val/"),
            "TEST.BEST_METRIC",
            f"must be a validation metric ('val/video_top1', ...), got {metric!r}: selecting on "
            "the test split is not allowed",
        )
        require(
            cfg.DATA.VALIDATION.FRACTION > 0 and "classification" in evaluators,
            "TEST.BEST_METRIC",
            "needs a validation split (DATA.VALIDATION.FRACTION > 0) and the 'classification' "
            "evaluator",
        )
        require(
            cfg.TEST.EVAL_PERIOD > 0,
            "TEST.EVAL_PERIOD",
            "must be > 0 when TEST.BEST_METRIC is set (there is nothing to select among)",
        )


def validate_knn_config(cfg: CfgNode) -> None:
    """Checks of ``TEST.KNN``."""
    from fima.config.validation import require

    knn = cfg.TEST.KNN
    if not knn.ENABLED:
        return
    require(knn.K > 0, "TEST.KNN.K", f"must be positive, got {knn.K}")
    require(knn.TEMPERATURE > 0, "TEST.KNN.TEMPERATURE", "must be positive")
    require(knn.NUM_TRAIN >= 0, "TEST.KNN.NUM_TRAIN", "must be >= 0 (0: every training video)")
    require(knn.NUM_TEST >= 0, "TEST.KNN.NUM_TEST", "must be >= 0 (0: every test video)")
    require(knn.NUM_CLIPS > 0, "TEST.KNN.NUM_CLIPS", "must be positive")
