"""A method, hook and dataset of one's own, registered from one ``.py`` file and trained by the
stock ``tools/train_net.py`` (README, "Adding a new backbone": ``--import`` takes SSL methods
and datasets too)."""

from __future__ import annotations

import math
import os
import subprocess

import pytest

from fima.data import build_dataset
from tests.conftest import tiny_cfg
from tests.projects.common import ROOT, read_metrics, run_tiny

USER_MODULE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "user_extension.py")


def train_twin(
    output_dir: str, *opts: str, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """``tools/train_net.py --import user_extension.py`` with the Quickstart MoCo config, the
    user's ``TwinSiam`` method and ``ClassFolders`` dataset (the tests' synthetic videos),
    shrunk to the tests' size and two iterations; then ``opts`` (``KEY VALUE`` overrides)."""
    videos = os.path.join(build_dataset(tiny_cfg(), "train").root, "UCF-101")
    return run_tiny(
        os.path.join(ROOT, "tools", "train_net.py"),
        os.path.join(ROOT, "configs", "Quickstart", "moco_synthetic.yaml"),
        output_dir,
        *("MODEL.META_ARCHITECTURE", "TwinSiam", "DATA.DATASET", "ClassFolders"),
        *("DATA.ROOT", videos, *opts),
        flags=("--import", USER_MODULE, *flags),
    )


@pytest.mark.slow
def test_own_method_hook_and_dataset_train_and_resume(tmp_path) -> None:
    out = str(tmp_path / "out")
    result = train_twin(out, "VIS_PERIOD", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_metrics(out)
    assert [row["twin_steps"] for row in rows] == [1, 2]  # the method's own hook ran
    # The stock augmentation gives float32 clips inside the trainer's autocast too.
    assert all(math.isfinite(row["loss_twin"]) and row["twin_dtype_is_float32"] for row in rows)
    assert "TEST_EVERY: 3" in (tmp_path / "out" / "config.yaml").read_text()
    # The hook's state is in the checkpoint: a longer run continues its count.
    resumed = train_twin(out, "VIS_PERIOD", "0", "SOLVER.MAX_ITER", "3", flags=("--resume",))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert read_metrics(out)[-1]["twin_steps"] == 3


def test_pictures_of_a_method_without_encoder_q_fail_before_training(tmp_path) -> None:
    """The Quickstart config draws pictures (VIS_PERIOD 60) of ``encoder_q`` or ``backbone``;
    a method with neither is told so at start-up, not after VIS_PERIOD iterations."""
    out = tmp_path / "out"
    result = train_twin(str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("train_net.py: error: VIS_PERIOD: TwinSiam has no 'encoder_q' or 'backbone'")
    )
    assert not any(name.endswith(".pth") for name in os.listdir(out))


def test_knn_monitor_of_a_method_without_evaluator_fails_before_training(tmp_path) -> None:
    """TEST.KNN.ENABLED asks for a kNN curve, which only a method's evaluator draws (MoCo's,
    FIMA's): a method without one is told so, rather than training without the curve."""
    out = tmp_path / "out"
    result = train_twin(str(out), "VIS_PERIOD", "0", "TEST.KNN.ENABLED", "True")
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("train_net.py: error: TEST.KNN.ENABLED: TwinSiam builds no evaluator")
    )
    assert not any(name.endswith(".pth") for name in os.listdir(out))
