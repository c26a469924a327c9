"""From configs only: a tiny pretraining with the kNN monitor, then a linear probe, retrieval and
``--eval-only`` records, for the pretrained and a randomly initialised backbone."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from types import ModuleType

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fima.engine import default_argument_parser
from tests.evaluation.helpers import TINY_OPTS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train_net() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "train_net", os.path.join(ROOT, "tools", "train_net.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_net(*argv: str) -> dict[str, float]:
    """tools/train_net.py in this process (one process: ``launch`` would call ``main`` directly)."""
    return _train_net().main(default_argument_parser().parse_args(list(argv)))


def config(*parts: str) -> str:
    return os.path.join(ROOT, "configs", *parts)


def _check_percentages(results: dict[str, float], names: list[str]) -> None:
    for name in names:
        assert name in results, (name, sorted(results))
        assert math.isfinite(results[name]) and 0.0 <= results[name] <= 100.0, name


def _metrics_rows(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


@pytest.mark.slow
def test_pretrain_then_linear_probe_retrieval_and_eval_only(tmp_path) -> None:
    pre = tmp_path / "pretrain"
    train_net(
        "--config-file", config("Quickstart", "moco_synthetic.yaml"), "OUTPUT_DIR", str(pre),
        *TINY_OPTS, "SOLVER.MAX_ITER", "4", "TEST.KNN.ENABLED", "True", "TEST.EVAL_PERIOD", "2",
    )  # fmt: skip
    knn_rows = [r for r in _metrics_rows(pre) if "knn/top1" in r]
    assert [r["iteration"] for r in knn_rows] == [1, 4]  # every 2 iterations and at the end
    events = EventAccumulator(str(pre))
    events.Reload()
    assert [e.step for e in events.Scalars("knn/top1")] == [1, 4]  # a TensorBoard curve
    weights = str(pre / "model_final.pth")

    # --eval-only on the pretraining checkpoint itself: its kNN monitor, recorded.
    pre_eval = tmp_path / "pretrain_eval"
    results = train_net(
        "--config-file", config("Quickstart", "moco_synthetic.yaml"), "--eval-only",
        "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(pre_eval), *TINY_OPTS,
        "TEST.KNN.ENABLED", "True",
    )  # fmt: skip
    _check_percentages(results, ["knn/top1"])
    record = json.loads((pre_eval / "results.json").read_text())
    with open(weights, "rb") as f:
        assert record["checkpoint_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert record["config_file"].endswith("moco_synthetic.yaml")
    assert record["metrics"] == results and record["timestamp"]

    for name, init in (("pretrained", weights), ("random", "")):
        probe = tmp_path / f"linear_{name}"
        results = train_net(
            "--config-file", config("Linear", "tiny3d_synthetic.yaml"), "MODEL.WEIGHTS", init,
            "OUTPUT_DIR", str(probe), *TINY_OPTS, "SOLVER.MAX_ITER", "3",
        )  # fmt: skip
        _check_percentages(results, ["test/clip_top1", "test/video_top1", "test/video_top5"])
        assert results["test/num_videos"] == 3
        last = [r for r in _metrics_rows(probe) if "test/video_top1" in r]
        assert [r["iteration"] for r in last] == [3]  # the last epoch is what is reported
        assert (probe / "inference" / "test" / "confusion_matrix.png").is_file()
        if init:
            # Through the whole trainer the probed backbone, BatchNorm statistics included, is
            # still exactly the pretrained query encoder.
            pretrained = torch.load(init, weights_only=True)["model"]
            probed = torch.load(probe / "model_final.pth", weights_only=True)["model"]
            backbone = {k: v for k, v in probed.items() if k.startswith("backbone.")}
            assert backbone and all(
                torch.equal(v, pretrained["encoder_q." + k[len("backbone.") :]])
                for k, v in backbone.items()
            )

        retrieval = tmp_path / f"retrieval_{name}"
        args = (
            "--config-file", config("Retrieval", "tiny3d_synthetic.yaml"), "--eval-only",
            "MODEL.WEIGHTS", init, "OUTPUT_DIR", str(retrieval), *TINY_OPTS,
        )  # fmt: skip
        first = train_net(*args)
        _check_percentages(first, [f"retrieval/R@{k}" for k in (1, 5, 10, 20, 50)])
        assert first["retrieval/num_queries"] == 3 and first["retrieval/num_train"] == 15
        assert json.loads((retrieval / "results.json").read_text())["metrics"] == first
        cached = sorted(os.listdir(retrieval / "features"))
        assert len(cached) == 2  # the training and the test videos' features
        again = train_net(*args, "TEST.RETRIEVAL.TOPK", "(1, 3)")  # another metric, same model
        assert again["retrieval/R@1"] == first["retrieval/R@1"]
        assert sorted(os.listdir(retrieval / "features")) == cached  # no second extraction
        assert "read from" in (retrieval / "log.txt").read_text()
        probe = train_net(*args, "TEST.EVALUATORS", "('linear_probe',)")  # the same features
        _check_percentages(probe, ["linear_probe/top1", "linear_probe/top5"])
        assert sorted(os.listdir(retrieval / "features")) == cached
        sensitivity = train_net(*args, "TEST.EVALUATORS", "('motion_sensitivity',)")
        _check_percentages(
            sensitivity, ["motion_sensitivity/instance_R@1", "motion_sensitivity/static_top1"]
        )
        assert -1.0 <= sensitivity["motion_sensitivity/frozen_similarity"] <= 1.0
        assert sensitivity["motion_sensitivity/num_videos"] == 3
        assert (retrieval / "inference" / "motion_sensitivity.json").is_file()
        if not init:
            # A cache file cut short (a full disk, a copy) is computed again and replaced,
            # with a warning that names it; it stopped every later evaluation.
            damaged = retrieval / "features" / cached[0]
            damaged.write_bytes(damaged.read_bytes()[:500])
            assert train_net(*args)["retrieval/R@1"] == first["retrieval/R@1"]
            log = (retrieval / "log.txt").read_text()
            assert f"Cannot read the cached features {damaged}" in log
            assert torch.load(damaged, weights_only=True)["features"].shape[0] == 3  # test videos
