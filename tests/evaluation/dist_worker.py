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
