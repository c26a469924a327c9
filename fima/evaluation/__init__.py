"""Evaluation: video-level classification, retrieval, the kNN monitor, and their records."""

from __future__ import annotations

from fima.config.config import CfgNode
from fima.evaluation.classification import ClassificationEvaluator, classification_metrics
from fima.evaluation.config import add_evaluation_config
from fima.evaluation.evaluator import BestModelSelector, Evaluator, EvaluatorList
from fima.evaluation.inference import VideoOutputs, infer_videos
from fima.evaluation.knn import KNNEvaluator, weighted_knn_predict
from fima.evaluation.linear_probe import LinearProbeEvaluator, fit_linear_probe
from fima.evaluation.motion_sensitivity import MotionSensitivityEvaluator
from fima.evaluation.results import summary_table, write_results
from fima.evaluation.retrieval import RetrievalEvaluator, recall_at_k


def build_classifier_evaluator(cfg: CfgNode) -> EvaluatorList:
    """What a ``VideoClassifier`` run evaluates, from ``TEST.EVALUATORS``.

    ``classification``: the validation split first when one is carved (``val/*``), then the
    test split (``test/*``); ``retrieval``: ``retrieval/R@k``; ``linear_probe``: a logistic
    regression on the frozen features (``linear_probe/top1``); ``motion_sensitivity``: how much
    of the frozen features is the videos' static appearance, and how much of the class single
    frames tell (``motion_sensitivity/*``). With
    ``TEST.BEST_METRIC`` the weights with the best validation value are kept (never selected on
    test).
    """
    from fima.data.datasets.validation import VALIDATION_SPLIT

    evaluators: list[Evaluator] = []
    if "classification" in cfg.TEST.EVALUATORS:
        if cfg.DATA.VALIDATION.FRACTION > 0:
            evaluators.append(ClassificationEvaluator(cfg, VALIDATION_SPLIT, "val"))
        evaluators.append(ClassificationEvaluator(cfg, cfg.DATA.TEST_SPLIT, "test"))
    if "retrieval" in cfg.TEST.EVALUATORS:
        evaluators.append(RetrievalEvaluator(cfg))
    if "linear_probe" in cfg.TEST.EVALUATORS:
        evaluators.append(LinearProbeEvaluator(cfg))
    if "motion_sensitivity" in cfg.TEST.EVALUATORS:
        evaluators.append(MotionSensitivityEvaluator(cfg))
    selector = (
        BestModelSelector(cfg.TEST.BEST_METRIC, cfg.OUTPUT_DIR) if cfg.TEST.BEST_METRIC else None
    )
    return EvaluatorList(evaluators, selector)


__all__ = [
    "BestModelSelector",
    "ClassificationEvaluator",
    "Evaluator",
    "EvaluatorList",
    "KNNEvaluator",
    "LinearProbeEvaluator",
    "MotionSensitivityEvaluator",
    "RetrievalEvaluator",
    "VideoOutputs",
    "add_evaluation_config",
    "build_classifier_evaluator",
    "classification_metrics",
    "fit_linear_probe",
    "infer_videos",
    "recall_at_k",
    "summary_table",
    "weighted_knn_predict",
    "write_results",
]
