"""What each process of the multi-process evaluation test runs (kept apart from the test module,
so that spawned processes do not import tests/conftest.py and its fresh dataset cache)."""

from __future__ import annotations

import json
import os

import torch

from fima.config import CfgNode
from fima.evaluation import ClassificationEvaluator
from fima.modeling import build_model
from fima.utils import comm


def evaluate_test_split(cfg: CfgNode) -> None:
    """Evaluate a seeded VideoClassifier on the test split; rank 0 writes the results."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    results = ClassificationEvaluator(cfg, cfg.DATA.TEST_SPLIT, "test").evaluate(model)
    gathered = comm.all_gather_object(results)
    if comm.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "ranks.json"), "w") as f:
            json.dump({"world_size": comm.get_world_size(), "results": gathered}, f)


def statistics_seen_by_an_evaluation(output_dir: str) -> None:
    """Each rank's BatchNorm holds its own running mean (rank + 1); ``DefaultTrainer.test``
    runs an evaluator that reads it. Each rank writes what the evaluator saw and what the
    model held afterwards."""
    from torch import nn

    from fima.config import get_cfg
    from fima.engine import DefaultTrainer

    model = nn.Sequential(nn.Conv1d(2, 2, 1), nn.BatchNorm1d(2))
    model[1].running_mean.fill_(float(comm.get_rank() + 1))

    class ReadsTheStatistics:
        def evaluate(self, evaluated: nn.Module) -> dict[str, float]:
            return {"seen": float(evaluated[1].running_mean[0])}

    seen = DefaultTrainer.test(get_cfg(), model, ReadsTheStatistics())["seen"]
    with open(os.path.join(output_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump({"seen": seen, "after": float(model[1].running_mean[0])}, f)
