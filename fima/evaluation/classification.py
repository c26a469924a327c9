"""Video-level action recognition accuracy (RECIPE.md §9 "Test").

Every video of the split is seen as ``TEST.NUM_CLIPS`` uniformly spaced clips, each centre-cropped
(or, with ``TEST.NUM_SPATIAL_CROPS`` 3, cropped at both ends and the centre of the long side); the
video's score is the mean of its views' scores (the classifier's logits, as in the reference). The
evaluator reports clip top-1 (over single views), video top-1 and top-5 and the mean per-class
accuracy, logs a per-class table, and writes ``OUTPUT_DIR/inference/<prefix>/classification.json``
(metrics, per-class accuracy, confusion matrix, per-video predictions, undecodable videos) and
``confusion_matrix.png`` (during training also a TensorBoard image). Numbers are percentages.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import torch
from tabulate import tabulate
from torch import nn

from fima.checkpoint import atomic_write
from fima.config.config import CfgNode
from fima.evaluation.inference import VideoOutputs, infer_videos, log_bad_videos
from fima.evaluation.results import reports_dir
from fima.evaluation.visualization import render_confusion_matrix
from fima.utils import comm
from fima.utils.events import get_event_storage, has_event_storage
from fima.utils.visualization import to_tensor

logger = logging.getLogger(__name__)


def classification_metrics(
    labels: np.ndarray, video_scores: np.ndarray, clip_predictions: np.ndarray
) -> dict[str, Any]:
    """Accuracies of one split.

    Args:
        labels: ``[V]`` true classes.
        video_scores: ``[V, C]`` video scores (mean of the clip scores).
        clip_predictions: ``[V, K]`` the predicted class of every clip.

    Returns:
        ``clip_top1``, ``video_top1``, ``video_top5`` (top-min(5, C)), ``mean_class_accuracy``
        in percent; ``confusion`` ``[C, C]`` (rows: true class, columns: predicted) and
        ``per_class`` ``[C]`` accuracy in percent (NaN for a class without videos).
    """
    num_classes = video_scores.shape[1]
    predictions = video_scores.argmax(axis=1)
    k = min(5, num_classes)
    top_k = np.argsort(-video_scores, axis=1, kind="stable")[:, :k]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    videos = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(videos > 0, 100.0 * np.diag(confusion) / videos, np.nan)
    return {
        "clip_top1": 100.0 * float((clip_predictions == labels[:, None]).mean()),
        "video_top1": 100.0 * float((predictions == labels).mean()),
        "video_top5": 100.0 * float((top_k == labels[:, None]).any(axis=1).mean()),
        "mean_class_accuracy": float(np.nanmean(per_class)),
        "confusion": confusion,
        "per_class": per_class,
        "predictions": predictions,
    }


def per_class_table(class_names: list[str], per_class: np.ndarray, videos: np.ndarray) -> str:
    """A three-column-pair table of per-class accuracies for the log."""
    cells = [
        (name, "-" if np.isnan(acc) else f"{acc:.1f}", int(n))
        for name, acc, n in zip(class_names, per_class, videos)
    ]
    columns = 3
    rows = []
    per_column = (len(cells) + columns - 1) // columns
    for r in range(per_column):
        row: list[Any] = []
        for c in range(columns):
            i = c * per_column + r
            row.extend(cells[i] if i < len(cells) else ("", "", ""))
        rows.append(row)
    return tabulate(
        rows, headers=["class", "acc %", "videos"] * columns, tablefmt="pipe", disable_numparse=True
    )


class ClassificationEvaluator:
    """Clip and video accuracy of a ``VideoClassifier`` on one split (all ranks).

    Args:
        cfg: the run's config.
        split: the dataset split (``DATA.TEST_SPLIT`` or the carved ``"val"``).
        prefix: metric-name prefix, ``"test"`` or ``"val"``: results are ``<prefix>/video_top1``.
    """

    def __init__(self, cfg: CfgNode, split: str, prefix: str) -> None:
        self.cfg = cfg
        self.split = split
        self.prefix = prefix
        self._loader = None
        self._class_names: list[str] = []

    def check(self, model: nn.Module) -> None:
        """Fail now if this evaluation could not run: the split must build, with labels that
        fit ``model``'s classes (a training run calls this at start-up)."""
        from fima.modeling.ssl.classifier import check_labels

        self._class_names = check_labels(self.cfg, self.split, model.num_classes)

    def _prepare(self, model: nn.Module) -> None:
        from fima.data import build_test_loader
        from fima.modeling.ssl.classifier import check_labels

        if self._loader is None:
            self._class_names = check_labels(self.cfg, self.split, model.num_classes)
            self._loader = build_test_loader(self.cfg, self.split)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Run on every rank; return the flat metrics (identical on all ranks)."""
        self._prepare(model)

        def scores(clips: torch.Tensor) -> dict[str, torch.Tensor]:
            clip_scores = model({"global": clips})  # [b, K, C]
            return {"score": clip_scores.mean(dim=1), "clip_pred": clip_scores.argmax(dim=2)}

        videos = infer_videos(self.cfg, model, self._loader, scores, desc=f"{self.prefix} videos")
        log_bad_videos(videos.bad, self.split)
        metrics = classification_metrics(
            videos.labels, videos.outputs["score"], videos.outputs["clip_pred"].astype(np.int64)
        )
        results = {
            f"{self.prefix}/{name}": metrics[name]
            for name in ("clip_top1", "video_top1", "video_top5", "mean_class_accuracy")
        }
        results[f"{self.prefix}/num_videos"] = float(len(videos))
        results[f"{self.prefix}/bad_videos"] = float(len(videos.bad))
        if comm.is_main_process():
            self._report(videos, metrics, results)
        return results

    def _report(self, videos: VideoOutputs, metrics: dict[str, Any], results: dict) -> None:
        confusion = metrics["confusion"]
        names = self._class_names
        logger.info(
            "Per-class video accuracy on the %s split (%d videos, %d excluded as undecodable):\n%s",
            self.split,
            len(videos),
            len(videos.bad),
            per_class_table(names, metrics["per_class"], confusion.sum(axis=1)),
        )
        report = {
            "split": self.split,
            "metrics": results,
            "num_clips": self.cfg.TEST.NUM_CLIPS,
            "num_spatial_crops": self.cfg.TEST.NUM_SPATIAL_CROPS,
            "class_names": names,
            "per_class": [
                {
                    "class": name,
                    "videos": int(confusion[i].sum()),
                    "correct": int(confusion[i, i]),
                    "accuracy": None if np.isnan(acc) else float(acc),
                }
                for i, (name, acc) in enumerate(zip(names, metrics["per_class"]))
            ],
            "confusion_matrix": confusion.tolist(),
            "videos": [
                {"index": int(i), "label": int(label), "prediction": int(pred)}
                for i, label, pred in zip(videos.indices, videos.labels, metrics["predictions"])
            ],
            "bad_videos": [
                {"index": index, "path": path, "reason": reason}
                for index, path, reason in videos.bad
            ],
        }
        output_dir = os.path.join(reports_dir(self.cfg.OUTPUT_DIR), self.prefix)
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "classification.json")
        atomic_write(path, lambda f: json.dump(report, f, indent=1), mode="w")
        image = os.path.join(output_dir, "confusion_matrix.png")
        picture = render_confusion_matrix(
            confusion, names, image, title=f"{self.split}: video top-1 {metrics['video_top1']:.1f}%"
        )
        if has_event_storage():  # evaluation during training: the picture goes to TensorBoard too
            get_event_storage().put_image(f"{self.prefix}/confusion_matrix", to_tensor(picture))
        logger.info("Wrote %s and %s", path, image)
