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


@pytest.mark.parametrize("spec", ["file", "module"])
def test_user_backbone_trains_with_moco_without_touching_fima(tmp_path, spec: str) -> None:
    user_file = tmp_path / "user_backbone.py"
    with open(os.path.join(ROOT, "examples", "my_backbone.py")) as f:
        user_file.write_text(f.read())
    out = tmp_path / "out"
    # A module name is found in the working directory too, not only on PYTHONPATH.
    result = train_net(
        "--import",
        str(user_file) if spec == "file" else "user_backbone",
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


MOCO = os.path.join(ROOT, "configs", "Quickstart", "moco_synthetic.yaml")
FIMA = os.path.join(ROOT, "configs", "Quickstart", "fima_synthetic.yaml")


def _one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit status 2 and ``train_net.py: error: ...message...`` as the last line, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train_net.py: error: ") and message in last, result.stderr


@pytest.mark.parametrize(
    ("config", "args", "message"),
    [
        (MOCO, ["SOLVER.BASE_LRR", "0.1"], "Non-existent config key: SOLVER.BASE_LRR"),
        (MOCO, ["SOLVER.IMS_PER_BATCH", "-4"], "SOLVER.IMS_PER_BATCH: must be positive"),
        (MOCO, ["MODEL.BACKBONE.NAME", "Nope"], "No backbone named 'Nope'"),
        (MOCO, ["LOG_PERIOD", "0"], "LOG_PERIOD: must be positive, got 0"),
        (MOCO, ["MODEL.DEVICE", "cuda:3"], "MODEL.DEVICE: cuda:3, but this process sees no GPU"),
        (MOCO, ["INPUT.CROP_SCALE", "('a','b')"], "INPUT.CROP_SCALE: must hold float values"),
        (MOCO, ["INPUT.MEAN", "('a','b','c')"], "INPUT.MEAN: must hold float values"),
        (MOCO, ["MODEL.TINY3D.WIDTHS", "(16, 32)"], "MODEL.TINY3D.WIDTHS: WIDTHS, TEMPORAL_"),
        (FIMA, ["MODEL.TINY3D.WIDTHS", "(16, 32)"], "MODEL.TINY3D.WIDTHS: WIDTHS, TEMPORAL_"),
        (MOCO, ["MODEL.TINY3D.SPATIAL_STRIDES", "(0,2,2,2)"], "SPATIAL_STRIDES: must be positive"),
        (MOCO, ["SOLVER.MOMENTUM", "-1"], "SOLVER.MOMENTUM: must be in [0, 1)"),
        (MOCO, ["MODEL.PROJECTOR.OUT_DIM", "0"], "MODEL.PROJECTOR.OUT_DIM: must be positive"),
        (MOCO, ["OUTPUT_DIR", ""], "OUTPUT_DIR: must not be empty"),
        (FIMA, ["INPUT.NUM_FRAMES", "4", "INPUT.CROP_SIZE", "16"], "INPUT.NUM_FRAMES: 4 frames"),
        (MOCO, ["SOLVER.BASE_LR", "0.1", "--resume"], "options (--resume) must come before"),
        (MOCO, ["--num-gpus", "2"], "options (--num-gpus) must come before the KEY VALUE"),
    ],
)
def test_bad_config_fails_before_anything_is_written(
    tmp_path, config: str, args: list[str], message: str
) -> None:
    result = train_net("--config-file", config, "OUTPUT_DIR", str(tmp_path / "out"), *TINY, *args)
    _one_line_error(result, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # Known only once the dataset is built: the 16 training videos of TINY.
        (["SOLVER.IMS_PER_BATCH", "32", "MODEL.MOCO.QUEUE_SIZE", "128"],
         "SOLVER.IMS_PER_BATCH: 16 usable videos cannot fill one batch of 32"),
        # Known once the model is built: MoCo has no evaluator without the kNN monitor.
        (["--eval-only"], "--eval-only: MoCo defines no evaluator"),
    ],
)  # fmt: skip
def test_what_the_built_run_shows_is_one_line(tmp_path, args: list[str], message) -> None:
    flags, overrides = [a for a in args if a.startswith("--")], [a for a in args if a[:2] != "--"]
    out = tmp_path / "out"
    result = train_net(*flags, "--config-file", MOCO, "OUTPUT_DIR", str(out), *TINY, *overrides)
    _one_line_error(result, message)
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: --config-file"),
        (["--config-file", MOCO, "--import", "nonexistent_module"],
         "--import nonexistent_module: no module named 'nonexistent_module'"),
        (["--config-file", MOCO, "--import", "os.nonexistent"],
         "--import os.nonexistent: no module named 'os.nonexistent'"),
    ],
)  # fmt: skip
def test_bad_command_line_is_one_line(tmp_path, args: list[str], message: str) -> None:
    _one_line_error(train_net(*args, "OUTPUT_DIR", str(tmp_path / "out")), message)
    assert not (tmp_path / "out").exists()


def test_a_user_module_that_fails_to_import_keeps_its_traceback(tmp_path) -> None:
    """Only a module that does not exist is a usage error; one that imports a missing module is
    a bug in it, whose traceback says where."""
    (tmp_path / "broken_backbone.py").write_text("import not_an_installed_module\n")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--import",
         "broken_backbone", "--config-file", MOCO, "OUTPUT_DIR", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])},
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "No module named 'not_an_installed_module'" in result.stderr


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
    # Said once, by the launcher before it spawns the processes, not once by each of them.
    assert result.stderr.count("error:") == 1
    assert "SOLVER.IMS_PER_BATCH: 3 must be divisible by the number of processes (2)" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr and "Terminating process" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-gpus", "0"], "need at least one process"),
        (["--num-gpus", "2", "--dist-backend", "nccl"], "nccl needs GPUs and none is visible"),
        (["--num-gpus", "2", "--dist-timeout", "0"], "--dist-timeout 0: must be a positive"),
        (["--num-gpus", "2", "--dist-timeout", "-5"], "--dist-timeout -5: must be a positive"),
        (["--num-gpus", "2", "--dist-url", "foo"], "--dist-url foo: expected auto"),
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


def test_eval_only_checks_the_splits_labels_before_it_loads_anything(tmp_path) -> None:
    for split in ("train", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
        (tmp_path / "data" / split / "a.mp4").write_bytes(b"")  # unlabelled; never decoded
    # Weights that would fail to load: the labels are checked first.
    (tmp_path / "weights.pth").write_text("not a checkpoint")
    result = train_net(
        "--eval-only", "--config-file", MOCO, "OUTPUT_DIR", str(tmp_path / "out"), *TINY,
        "TEST.KNN.ENABLED", "True", "DATA.DATASET", "VideoList",
        "DATA.ROOT", str(tmp_path / "data"), "MODEL.WEIGHTS", str(tmp_path / "weights.pth"),
    )  # fmt: skip
    _one_line_error(result, "The kNN monitor (TEST.KNN.ENABLED) needs labels, but VideoList")


def test_eval_only_of_a_classifier_without_weights_is_an_error_not_chance(tmp_path) -> None:
    """--eval-only of a fine-tuning config without MODEL.WEIGHTS (or --resume in a folder without
    checkpoints) scored a random head, wrote results.json and exited 0: a chance-level top-1
    that looked like a result. A random backbone's features stay a baseline for retrieval."""
    finetune = os.path.join(ROOT, "configs", "Finetune", "tiny3d_synthetic.yaml")
    for resume, where in (([], ""), (["--resume"], " and OUTPUT_DIR holds no checkpoint")):
        out = tmp_path / f"out{len(resume)}"
        result = train_net(
            "--eval-only", *resume, "--config-file", finetune, "OUTPUT_DIR", str(out), *TINY,
            "MODEL.WEIGHTS", "", "TEST.NUM_CLIPS", "1",
        )  # fmt: skip
        _one_line_error(result, f"--eval-only: MODEL.WEIGHTS is empty{where}, so the")
        assert not (out / "results.json").exists()
    retrieval = os.path.join(ROOT, "configs", "Retrieval", "tiny3d_synthetic.yaml")
    result = train_net(
        "--eval-only", "--config-file", retrieval, "OUTPUT_DIR", str(tmp_path / "features"),
        *TINY, "MODEL.WEIGHTS", "", "TEST.NUM_CLIPS", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "features" / "results.json").is_file()


def test_an_eval_only_that_cannot_start_moves_nothing(tmp_path) -> None:
    """An --eval-only of weights that cannot be loaded stopped with its one-line error, but had
    already moved the training run's inference/ and config.yaml aside (the run's own reports
    were no longer where they were, and config.yaml was a config that never ran)."""
    finetune = os.path.join(ROOT, "configs", "Finetune", "tiny3d_synthetic.yaml")
    out = tmp_path / "out"
    common = ["--config-file", finetune, "OUTPUT_DIR", str(out), *TINY, "TEST.NUM_CLIPS", "1"]
    trained = train_net(*common, "MODEL.WEIGHTS", "", "SOLVER.MAX_ITER", "2")
    assert trained.returncode == 0, trained.stderr

    def files() -> dict[str, bytes]:  # but log.txt, which each run appends to, and the lock
        paths = (p for p in out.rglob("*") if p.is_file() and p.name not in ("log.txt", ".lock"))
        return {str(path.relative_to(out)): path.read_bytes() for path in paths}

    before = files()
    assert "inference/test/classification.json" in before
    weights = tmp_path / "text.pth"
    weights.write_text("not a checkpoint\n")
    _one_line_error(train_net("--eval-only", *common, "MODEL.WEIGHTS", str(weights)), str(weights))
    assert files() == before


def test_a_resume_that_cannot_start_is_one_line_and_keeps_the_runs_config(tmp_path) -> None:
    """Another optimizer, or no readable checkpoint, ended --resume in a traceback, after
    config.yaml had been replaced by the config that never ran."""
    out = tmp_path / "out"
    args = ["--config-file", MOCO, "OUTPUT_DIR", str(out), *TINY, "SOLVER.MAX_ITER", "2"]
    assert train_net(*args).returncode == 0
    config = (out / "config.yaml").read_text()
    result = train_net("--resume", *args, "SOLVER.OPTIMIZER", "AdamW")
    _one_line_error(result, "The checkpoint was trained with SGD and this run builds AdamW")
    for checkpoint in out.glob("*.pth"):
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    result = train_net("--resume", *args, "SOLVER.MAX_ITER", "4")
    _one_line_error(result, f"None of the checkpoints in {out} can be read")
    assert (out / "config.yaml").read_text() == config
    assert not list(out.glob("config.*.yaml"))


def test_an_error_found_by_every_rank_names_the_ranks_other_than_0(tmp_path) -> None:
    """A start-up error that only the spawned processes find (a malformed list file) was printed
    by each of them as the same unattributed line."""
    for split in ("train", "test"):
        (tmp_path / f"{split}.csv").write_text("a.mp4,0\nb.mp4,1\na,b,c\n")
    result = train_net(
        "--num-gpus", "2", "--config-file", MOCO, "OUTPUT_DIR", str(tmp_path / "out"), *TINY,
        "DATA.DATASET", "VideoList", "DATA.ROOT", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert errors and all(
        line.startswith(("train_net.py: error: ", "train_net.py (rank 1): error: "))
        for line in errors
    ), result.stderr
    assert sum(line.startswith("train_net.py: error: ") for line in errors) <= 1
    assert all("train.csv:3: expected 'path,label'" in line for line in errors)
    assert "Traceback" not in result.stderr
