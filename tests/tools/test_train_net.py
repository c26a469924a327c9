"""tools/train_net.py as a user runs it: a user backbone from outside fima, outputs, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fima.modeling import build_model
from tests.conftest import tiny_cfg
from tests.engine.procs import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_net(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )


def test_user_backbone_trains_with_moco_without_touching_fima(tmp_path) -> None:
    user_file = tmp_path / "user_backbone.py"
    with open(os.path.join(ROOT, "examples", "my_backbone.py")) as f:
        user_file.write_text(f.read())
    out = tmp_path / "out"
    result = train_net(
        "--import",
        str(user_file),
        "--config-file",
        os.path.join(ROOT, "configs", "Quickstart", "moco_synthetic.yaml"),
        "MODEL.BACKBONE.NAME",
        "TwoLayer3D",
        "MODEL.TWO_LAYER3D.WIDTH",
        "8",
        "OUTPUT_DIR",
        str(out),
        *TINY,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("config.yaml", "metrics.json", "model_final.pth", "log.txt"):
        assert (out / name).is_file()
    assert "TwoLayer3D" in (out / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["SOLVER.BASE_LRR", "0.1"], "Non-existent config key: SOLVER.BASE_LRR"),
        (["SOLVER.IMS_PER_BATCH", "-4"], "SOLVER.IMS_PER_BATCH: must be positive"),
        (["MODEL.BACKBONE.NAME", "Nope"], "No backbone named 'Nope'"),
    ],
)
def test_bad_config_fails_before_training(tmp_path, args: list[str], message: str) -> None:
    result = train_net(
        "--config-file",
        os.path.join(ROOT, "configs", "Quickstart", "moco_synthetic.yaml"),
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        *TINY,
        *args,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_bad_config_on_two_processes_exits_with_the_message_not_a_traceback(tmp_path) -> None:
    result = train_net(
        "--num-gpus",
        "2",
        "--config-file",
        os.path.join(ROOT, "configs", "Quickstart", "moco_synthetic.yaml"),
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        *TINY,
        "SOLVER.IMS_PER_BATCH",
        "3",
    )
    assert result.returncode == 2
    assert "SOLVER.IMS_PER_BATCH: 3 must be divisible by the number of processes (2)" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-gpus", "0"], "need at least one process"),
        (["--num-gpus", "2", "--dist-backend", "nccl"], "nccl needs GPUs and none is visible"),
    ],
)
def test_bad_process_layout_is_one_line_not_a_traceback(tmp_path, args, message) -> None:
    result = train_net(
        *args,
        "--config-file",
        os.path.join(ROOT, "configs", "Quickstart", "moco_synthetic.yaml"),
        "OUTPUT_DIR",
        str(tmp_path / "out"),
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("empty", "no videos in it or in class folders below it"),
        ("bad_line", "expected"),
    ],
)
def test_a_dataset_not_as_the_config_says_is_one_line_not_a_traceback(
    tmp_path, layout: str, message: str
) -> None:
    """A VideoList root that exists but whose split is an empty folder, or whose list file has a
    malformed line: exit status 2, the message, nothing trained."""
    root = tmp_path / "data"
    if layout == "empty":
        (root / "train").mkdir(parents=True)
    else:
        root.mkdir()
        (root / "train.csv").write_text("a.mp4,1,extra,fields\n")
    result = train_net(
        "--config-file",
        os.path.join(ROOT, "configs", "Quickstart", "moco_synthetic.yaml"),
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        *TINY,
        "DATA.DATASET",
        "VideoList",
        "DATA.ROOT",
        str(root),
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


def _weights(tmp_path, kind: str) -> str:
    """A MODEL.WEIGHTS file of the given kind, for the tiny settings of TINY (4 classes)."""
    path = tmp_path / f"{kind}.pth"
    if kind == "text":
        path.write_text("not a checkpoint\n")
        return str(path)
    cfg = tiny_cfg(**{"MODEL.CLASSIFIER.NUM_CLASSES": 4})
    if kind == "moco":
        cfg.MODEL.META_ARCHITECTURE = "MoCo"
    else:
        cfg.MODEL.META_ARCHITECTURE = "VideoClassifier"
        if kind == "classifier_other_widths":
            cfg.MODEL.TINY3D.WIDTHS = (8, 16, 32, 32)
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return str(path)


@pytest.mark.parametrize(
    ("config", "eval_only", "kind", "message"),
    [
        ("Finetune", True, "classifier_other_widths", "does not match the model: shape: backbone."),
        ("Finetune", True, "moco", "has no classifier head"),
        ("Quickstart", False, "classifier", "does not match the model: missing: encoder_k."),
        ("Finetune", False, "text", "Cannot read checkpoint"),
    ],
)
def test_weights_that_do_not_fit_are_one_line_not_a_partly_random_model(
    tmp_path, config: str, eval_only: bool, kind: str, message: str
) -> None:
    """fvcore's non-strict load only warned: the run evaluated or trained a partly random model
    with exit status 0."""
    weights = _weights(tmp_path, kind)
    config_file = {
        "Finetune": os.path.join(ROOT, "configs", "Finetune", "tiny3d_synthetic.yaml"),
        "Quickstart": os.path.join(ROOT, "configs", "Quickstart", "moco_synthetic.yaml"),
    }[config]
    out = tmp_path / "out"
    result = train_net(
        "--config-file",
        config_file,
        *(["--eval-only"] if eval_only else []),
        "OUTPUT_DIR",
        str(out),
        *TINY,
        "MODEL.CLASSIFIER.NUM_CLASSES",
        "4",
        "MODEL.WEIGHTS",
        weights,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "train_net.py: error: " in line]
    assert len(errors) == 1 and weights in errors[0] and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "results.json").exists() and not list(out.glob("*.pth"))
