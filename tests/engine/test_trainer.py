"""The loop and hooks on a toy model; DefaultTrainer outputs and exact resume on tiny MoCo."""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import math
import os
import tempfile
from unittest import mock

import numpy as np
import pytest
import torch
from fvcore.common.param_scheduler import CosineParamScheduler
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from fima.checkpoint import CheckpointMismatchError
from fima.config import ConfigError, validate_cfg
from fima.engine import DefaultTrainer, HookBase, SimpleTrainer, default_setup
from fima.engine.defaults import check_before_launch
from fima.engine.hooks import EvalHook, NonFiniteLossGuard
from fima.engine.solver import build_lr_scheduler
from fima.engine.train_loop import amp_dtype_name, autocast_dtype, describe_amp, resolve_amp
from fima.utils import logger as fima_logger
from tests.conftest import ROOT, tiny_cfg


class ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss_a": (self.weight * batch).sum(), "loss_b": self.weight.square().mean()}


def endless(value: float = 1.0):
    while True:
        yield torch.full((3,), value)


def test_hooks_are_called_in_order_and_count() -> None:
    model = ToyModel()
    trainer = SimpleTrainer(model, endless(), torch.optim.SGD(model.parameters(), lr=0.1))
    hook = mock.Mock(spec=HookBase)
    hook.state_dict.return_value = {}
    trainer.register_hooks([hook])
    trainer.train(0, 5)
    names = [c[0] for c in hook.method_calls]
    assert names[0] == "before_train" and names[-1] == "after_train"
    assert names.count("before_step") == names.count("after_backward") == 5
    assert names.count("after_step") == 5
    assert names[1:4] == ["before_step", "after_backward", "after_step"]


def test_gradient_accumulation_averages_micro_batches() -> None:
    torch.manual_seed(0)
    batches = [torch.randn(3) for _ in range(4)]
    accumulated = ToyModel()
    trainer = SimpleTrainer(
        accumulated,
        iter(batches),
        torch.optim.SGD(accumulated.parameters(), lr=0.1),
        accum_steps=2,
    )
    trainer.train(0, 2)
    reference = ToyModel()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for pair in (batches[:2], batches[2:]):
        optimizer.zero_grad()
        sum(sum(reference(b).values()) for b in pair).div(2).backward()
        optimizer.step()
    torch.testing.assert_close(accumulated.weight, reference.weight)


def test_non_finite_loss_stops_before_the_update() -> None:
    model = ToyModel()

    def data():
        yield torch.ones(3)
        yield torch.ones(3)
        yield torch.full((3,), float("nan"))

    trainer = SimpleTrainer(model, data(), torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.register_hooks([NonFiniteLossGuard()])
    with pytest.raises(FloatingPointError, match=r"iteration 2 \(loss_a=nan, loss_b=0\.\d+\)"):
        trainer.train(0, 10)
    assert torch.isfinite(model.weight).all()


class LossRecorder(HookBase):
    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []

    def after_step(self) -> None:
        self.losses.append((self.trainer.iter, self.trainer.loss_dict["loss_inst"]))


class StopAt(HookBase):
    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def after_step(self) -> None:
        if self.trainer.iter == self.iteration:
            raise KeyboardInterrupt("simulated interruption")


def _run(cfg, resume: bool, stop_at: int | None = None) -> tuple[DefaultTrainer, LossRecorder]:
    trainer = DefaultTrainer(cfg)
    recorder = LossRecorder()
    trainer.register_hooks([recorder] + ([StopAt(stop_at)] if stop_at is not None else []))
    trainer.resume_or_load(resume=resume)
    with contextlib.suppress(KeyboardInterrupt):
        trainer.train()
    return trainer, recorder


def test_default_trainer_writes_outputs_and_resumes_exactly(tmp_path) -> None:
    def config(name: str, resume: bool = False):
        cfg = tiny_cfg(
            str(tmp_path / name), **{"SOLVER.MAX_ITER": 6, "SOLVER.CHECKPOINT_PERIOD": 3}
        )
        return default_setup(cfg, argparse.Namespace(resume=resume, eval_only=False))

    straight, straight_losses = _run(config("straight"), resume=False)
    out = tmp_path / "straight"
    for name in ("config.yaml", "metrics.json", "model_final.pth", "last_checkpoint"):
        assert (out / name).is_file(), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    last_step = [r for r in rows if r["iteration"] == 5][0]
    assert {"loss_inst", "total_loss", "lr", "acc_inst", "time", "data_time"} <= set(last_step)

    _, first = _run(config("resumed"), resume=False, stop_at=4)
    with pytest.raises(FileExistsError, match="--resume"):
        config("resumed")  # starting over would overwrite the interrupted run
    resumed, second = _run(config("resumed", resume=True), resume=True)
    assert resumed.start_iter == 3  # the checkpoint of iteration 2, not the crash at 4
    combined = first.losses[:3] + second.losses
    assert combined == straight_losses.losses  # bit-identical losses at every iteration
    for name, tensor in straight.method.state_dict().items():
        assert torch.equal(tensor, resumed.method.state_dict()[name]), name
    # The interrupted run logged iterations 3 and 4, which the resumed run trained again: each
    # iteration is recorded once, in metrics.json and in TensorBoard (purged from the old file).
    out = tmp_path / "resumed"
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(7))
    # ... with the values of the uninterrupted run: the losses are medians over the last 20
    # iterations, whose values the checkpoint keeps.
    straight_rows = [
        json.loads(line)
        for line in (tmp_path / "straight" / "metrics.json").read_text().splitlines()
    ]
    for row, expected in zip(rows, straight_rows, strict=True):
        losses = {k: v for k, v in row.items() if "loss" in k or k.startswith("acc")}
        assert losses == {k: expected[k] for k in losses}, row["iteration"]
    events = EventAccumulator(str(out))
    events.Reload()
    assert [e.step for e in events.Scalars("total_loss")] == list(range(6))


def test_a_run_started_again_after_stopping_before_its_first_checkpoint_logs_once(
    tmp_path,
) -> None:
    """The first run stopped at iteration 2, before any checkpoint; the run started again in
    the same OUTPUT_DIR records each iteration once (the first run's records are kept aside)."""

    def config():
        cfg = tiny_cfg(str(tmp_path), **{"SOLVER.CHECKPOINT_PERIOD": 10})
        return default_setup(cfg, argparse.Namespace(resume=False, eval_only=False))

    _run(config(), resume=False, stop_at=2)
    _run(config(), resume=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(5))
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [e.step for e in events.Scalars("total_loss")] == list(range(4))
    assert len(list(tmp_path.glob("metrics.*.json"))) == 1


def test_an_output_dir_under_home_is_expanded(tmp_path, monkeypatch) -> None:
    # "~/runs/x" made a folder named "~" in the working directory.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    cfg = default_setup(tiny_cfg("~/runs/x"), argparse.Namespace(resume=False, eval_only=False))
    output_dir = tmp_path / "home" / "runs" / "x"
    assert str(output_dir) == cfg.OUTPUT_DIR
    assert (output_dir / "config.yaml").is_file()
    assert not (tmp_path / "~").exists()


def test_a_new_run_refuses_checkpoints_even_without_their_pointer(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "model_0000005.pth").write_bytes(b"weights of an earlier run")
    cfg = tiny_cfg(str(out))
    with pytest.raises(FileExistsError, match=r"already holds a run \(model_0000005.pth\)"):
        default_setup(cfg, argparse.Namespace(resume=False, eval_only=False))
    assert (out / "model_0000005.pth").read_bytes() == b"weights of an earlier run"
    assert not (out / "config.yaml").exists()


def test_resuming_does_not_need_the_weights_the_run_started_from(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "model_0000003.pth").write_bytes(b"the run's own checkpoint")
    cfg = tiny_cfg(str(out), **{"MODEL.WEIGHTS": str(tmp_path / "moved_away.pth")})
    with pytest.raises(ConfigError, match="MODEL.WEIGHTS: file .*moved_away.pth' does not exist"):
        default_setup(cfg.clone(), argparse.Namespace(resume=False, eval_only=False))
    resumed = default_setup(cfg, argparse.Namespace(resume=True, eval_only=False))
    assert str(tmp_path / "moved_away.pth") == resumed.MODEL.WEIGHTS  # recorded as given


def test_continuing_a_finished_run_keeps_its_final_weights_and_the_retention(tmp_path) -> None:
    def config(max_iter: int, resume: bool):
        cfg = tiny_cfg(
            str(tmp_path / "run"),
            **{
                "SOLVER.MAX_ITER": max_iter,
                "SOLVER.CHECKPOINT_PERIOD": 2,
                "SOLVER.MAX_TO_KEEP": 2,
            },
        )
        return default_setup(cfg, argparse.Namespace(resume=resume, eval_only=False))

    _run(config(5, resume=False), resume=False)
    out = tmp_path / "run"
    first_final = (out / "model_final.pth").read_bytes()
    assert sorted(p.name for p in out.glob("model_*.pth")) == [
        "model_0000001.pth", "model_0000003.pth", "model_final.pth",
    ]  # fmt: skip
    resumed, _ = _run(config(9, resume=True), resume=True)
    assert resumed.start_iter == 5
    # The first run's final weights live on under their iteration; the periodic checkpoints of
    # both runs together are held to MAX_TO_KEEP.
    assert (out / "model_0000004.pth").read_bytes() == first_final
    assert sorted(p.name for p in out.glob("model_*.pth")) == [
        "model_0000004.pth", "model_0000005.pth", "model_0000007.pth", "model_final.pth",
    ]  # fmt: skip
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 8
    # metrics.json keeps what the first run recorded after training (at iteration 5, about the
    # weights the second run started from); every step is recorded once.
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert {"iteration": 5, "bad_videos": 0.0} in rows
    assert [r["iteration"] for r in rows if "total_loss" in r] == list(range(9))


def test_continuing_a_finished_run_again_after_a_stop_records_each_step_once(tmp_path) -> None:
    """A finished run continued to a larger MAX_ITER that stops before its first checkpoint
    resumes from the finished run's model_final again: the stopped run's steps, at the
    finished run's last record's iteration too, were kept beside the ones trained again."""

    def config(max_iter: int, resume: bool):
        cfg = tiny_cfg(
            str(tmp_path / "run"),
            **{"SOLVER.MAX_ITER": max_iter, "SOLVER.CHECKPOINT_PERIOD": 100},
        )
        return default_setup(cfg, argparse.Namespace(resume=resume, eval_only=False))

    _run(config(4, resume=False), resume=False)
    _run(config(8, resume=True), resume=True, stop_at=5)  # no checkpoint since model_final
    resumed, _ = _run(config(8, resume=True), resume=True)
    assert resumed.start_iter == 4
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.json").read_text().splitlines()
    ]
    assert {"iteration": 4, "bad_videos": 0.0} in rows  # the finished run's record after training
    assert [r["iteration"] for r in rows if "total_loss" in r] == list(range(8))


def test_resuming_past_max_iter_says_there_is_nothing_to_train(tmp_path) -> None:
    def config(max_iter: int, resume: bool):
        cfg = tiny_cfg(str(tmp_path / "run"), **{"SOLVER.MAX_ITER": max_iter})
        return default_setup(cfg, argparse.Namespace(resume=resume, eval_only=False))

    _run(config(3, resume=False), resume=False)
    resumed, recorder = _run(config(2, resume=True), resume=True)
    assert resumed.start_iter == 3 and recorder.losses == []
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "has trained 3 iterations, as many as or more than this run's 2" in log


def test_resuming_a_finished_run_with_nothing_to_train_adds_no_files_or_iterations(
    tmp_path,
) -> None:
    """The run stops where it finished: no record past MAX_ITER in metrics.json and no copy of
    model_final.pth kept under an iteration's name, since no new model_final is written."""

    def config(resume: bool):
        cfg = tiny_cfg(str(tmp_path / "run"), **{"SOLVER.MAX_ITER": 3})
        return default_setup(cfg, argparse.Namespace(resume=resume, eval_only=False))

    _run(config(resume=False), resume=False)
    out = tmp_path / "run"
    resumed, recorder = _run(config(resume=True), resume=True)
    assert resumed.start_iter == resumed.iter == 3 and recorder.losses == []
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert max(r["iteration"] for r in rows) == 3
    assert sorted(p.name for p in out.glob("model_*.pth")) == [
        "model_0000001.pth",
        "model_final.pth",
    ]


def test_default_setup_sets_cudnn_autotuning_from_the_config(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    for flag in (True, False):
        cfg = tiny_cfg(str(tmp_path / str(flag)), **{"CUDNN_BENCHMARK": flag})
        default_setup(cfg, argparse.Namespace(resume=False, eval_only=False))
        assert torch.backends.cudnn.benchmark is flag


def test_default_setup_validates_before_it_writes_anything(tmp_path) -> None:
    """A bad config leaves nothing on disk (an empty OUTPUT_DIR is one); what the checks logged
    for a good one reaches its log.txt."""
    args = argparse.Namespace(resume=False, eval_only=False)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="LOG_PERIOD: must be positive"):
        default_setup(tiny_cfg(str(out), LOG_PERIOD=0), args)
    assert not out.exists()
    with pytest.raises(ConfigError, match="OUTPUT_DIR: must not be empty"):
        default_setup(tiny_cfg(""), args)
    default_setup(tiny_cfg(str(out)), args)  # MoCo in one process, no SPLIT_BN_GROUPS: a warning
    assert "MODEL.SPLIT_BN_GROUPS is 1 in a single process" in (out / "log.txt").read_text()


def test_an_output_dir_that_cannot_be_written_is_a_config_error(tmp_path, monkeypatch) -> None:
    """OUTPUT_DIR that is a file, below a file, or on a read-only file system: tools/train_net.py
    printed '[Errno 17] File exists' or an OSError traceback from os.makedirs or logging."""
    args = argparse.Namespace(resume=False, eval_only=False)
    (tmp_path / "file").write_text("the user's\n")
    with pytest.raises(ConfigError, match=r"OUTPUT_DIR: .*/file is a file, not a folder"):
        default_setup(tiny_cfg(str(tmp_path / "file")), args)
    with pytest.raises(ConfigError, match=r"OUTPUT_DIR: cannot write to .*/file/out \(Not a"):
        default_setup(tiny_cfg(str(tmp_path / "file" / "out")), args)
    assert (tmp_path / "file").read_text() == "the user's\n"
    (tmp_path / "read_only").mkdir()

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(ConfigError, match=r"cannot write to .*read_only \(Read-only file system"):
        default_setup(tiny_cfg(str(tmp_path / "read_only")), args)


def test_a_second_run_into_an_output_dir_in_use_is_refused(tmp_path) -> None:
    """Two runs started into one OUTPUT_DIR both trained, into the same checkpoint names,
    metrics.json and inference/: what was left was a mix of the two."""
    args = argparse.Namespace(resume=False, eval_only=False)
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "w") as other:  # as another process holds it
        other.write("pid 4242 on elsewhere\n")
        other.flush()
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(
            ConfigError, match=r"in use by another run \(pid 4242 on elsewhere\): wait for it"
        ):
            default_setup(tiny_cfg(str(out)), args)
        assert sorted(os.listdir(out)) == [".lock"]
        # A launcher of several processes says so before it spawns them (each rank said it).
        launch_args = argparse.Namespace(
            config_file=os.path.join(ROOT, "configs", "Quickstart", "moco_synthetic.yaml"),
            opts=["OUTPUT_DIR", str(out)], imports=[], resume=True, eval_only=False,
        )  # fmt: skip
        with pytest.raises(ConfigError, match=r"in use by another run \(pid 4242 on elsewhere"):
            check_before_launch(launch_args, 2, True)
    # Free again: this process holds it, and may set up the same folder again.
    default_setup(tiny_cfg(str(out)), args)
    default_setup(tiny_cfg(str(out)), argparse.Namespace(resume=True, eval_only=False))
    assert f"pid {os.getpid()} on " in (out / ".lock").read_text()


def test_configs_replaced_within_one_second_are_all_kept(tmp_path) -> None:
    """config.yaml of an earlier run was renamed to config.<its second>.yaml, replacing one of
    that second already there: of three runs started within one second, the first's config was
    lost."""
    out = tmp_path / "out"
    stamp = 1_796_000_000
    for seed in (1, 2, 3):
        default_setup(
            tiny_cfg(str(out), SEED=seed), argparse.Namespace(resume=False, eval_only=False)
        )
        os.utime(out / "config.yaml", (stamp, stamp))
    kept = [path.read_text() for path in out.glob("config.*.yaml")]
    assert sorted(seed for seed in (1, 2) for text in kept if f"SEED: {seed}\n" in text) == [1, 2]
    assert "SEED: 3" in (out / "config.yaml").read_text()


def test_float16_needs_a_gpu_and_is_validated() -> None:
    model = ToyModel()
    with pytest.raises(ValueError, match="float16 mixed precision needs a GPU"):
        SimpleTrainer(
            model,
            endless(),
            torch.optim.SGD(model.parameters(), lr=0.1),
            amp=True,
            amp_dtype=torch.float16,
        )
    cfg = tiny_cfg(**{"SOLVER.AMP.DTYPE": "float16", "MODEL.DEVICE": "cpu"})
    with pytest.raises(ConfigError, match="SOLVER.AMP.DTYPE: float16 needs a GPU"):
        validate_cfg(cfg)


class LinearModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.dtypes: list[torch.dtype] = []

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.linear(batch[None])
        self.dtypes.append(out.dtype)
        return {"loss": out.float().square().mean()}


def test_bfloat16_autocast_on_the_cpu_inside_simple_trainer() -> None:
    model = LinearModel()
    trainer = SimpleTrainer(model, endless(), torch.optim.SGD(model.parameters(), lr=0.1), amp=True)
    trainer.train(0, 2)
    assert model.dtypes == [torch.bfloat16, torch.bfloat16]
    assert model.linear.weight.dtype == torch.float32
    assert not trainer.grad_scaler.is_enabled()  # bfloat16 needs no loss scaling


def test_resume_across_precisions_keeps_or_starts_the_gradient_scaler(caplog) -> None:
    """A bfloat16 checkpoint (no scaler state) resumed in float16, as a CPU run's "auto" resumed
    on a GPU, starts the scaler afresh; a float16 one resumed in bfloat16 ignores its state. The
    float16 side is a CPU GradScaler here (SimpleTrainer makes one only on a GPU)."""
    model = LinearModel()
    bfloat16 = SimpleTrainer(
        model, endless(), torch.optim.SGD(model.parameters(), lr=0.1), amp=True
    )
    bfloat16.train(0, 1)
    saved = bfloat16.state_dict()
    assert saved["grad_scaler"] == {}
    float16 = SimpleTrainer(model, endless(), torch.optim.SGD(model.parameters(), lr=0.1))
    float16.grad_scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    float16.load_state_dict(saved)
    assert float16.iter == 1 and float16.grad_scaler.get_scale() == 1024.0
    assert any("without float16 loss scaling" in r.getMessage() for r in caplog.records)
    float16.grad_scaler.load_state_dict({**float16.grad_scaler.state_dict(), "scale": 8.0})
    bfloat16.load_state_dict(float16.state_dict())
    assert not bfloat16.grad_scaler.is_enabled()
    # float16 to float16 restores the scale.
    resumed = SimpleTrainer(model, endless(), torch.optim.SGD(model.parameters(), lr=0.1))
    resumed.grad_scaler = torch.amp.GradScaler("cpu")
    resumed.load_state_dict(float16.state_dict())
    assert resumed.grad_scaler.get_scale() == 8.0


def test_resume_applies_the_configs_optimizer_settings_and_refuses_another_optimizer(
    caplog,
) -> None:
    model = LinearModel()
    saved = SimpleTrainer(
        model, endless(), torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)
    )
    saved.train(0, 2)
    state = saved.state_dict()
    same = SimpleTrainer(
        model, endless(), torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="fima.engine.train_loop"):
        same.load_state_dict(state)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert same.optimizer.state_dict()["param_groups"] == state["optimizer"]["param_groups"]
    changed = SimpleTrainer(
        model, endless(), torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5)
    )
    with caplog.at_level("WARNING", logger="fima.engine.train_loop"):
        changed.load_state_dict(state)
    assert changed.optimizer.param_groups[0]["weight_decay"] == 0.5
    assert "weight_decay 0.0001 -> 0.5" in caplog.text
    # The momentum buffers are the checkpoint's.
    for mine, theirs in zip(
        changed.optimizer.state.values(), saved.optimizer.state.values(), strict=True
    ):
        assert torch.equal(mine["momentum_buffer"], theirs["momentum_buffer"])
    adamw = SimpleTrainer(model, endless(), torch.optim.AdamW(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="trained with SGD and this run builds AdamW"):
        adamw.load_state_dict(state)


def test_resumed_schedule_follows_the_config_from_the_first_step(caplog) -> None:
    """A longer MAX_ITER or another BASE_LR applies from the first resumed step; unchanged,
    the rate is exactly the one the saved run would have used."""

    def schedule(max_iter: int, base_lr: float):
        cfg = tiny_cfg(**{"SOLVER.BASE_LR": base_lr, "SOLVER.LR_SCHEDULER": "cosine"})
        optimizer = torch.optim.SGD(LinearModel().parameters(), lr=base_lr)
        return optimizer, build_lr_scheduler(cfg, optimizer, max_iter, iters_per_epoch=1)

    optimizer, scheduler = schedule(12, 0.05)
    for _ in range(12):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert optimizer.param_groups[0]["lr"] == 0.0  # the end of the cosine
    for max_iter, base_lr in ((12, 0.05), (16, 0.05), (16, 0.5)):
        resumed_optimizer, resumed = schedule(max_iter, base_lr)
        resumed.load_state_dict(state)
        expected = base_lr * CosineParamScheduler(1.0, 0.0)(12 / max_iter)
        assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)
        assert resumed.get_last_lr() == [resumed_optimizer.param_groups[0]["lr"]]
    assert "config's base learning rates [0.5] instead of the checkpoint's [0.05]" in caplog.text
    # The length is said too, with the rate it changes: it was followed silently.
    said = "a schedule over 16 iterations instead of the checkpoint's 12"
    assert caplog.text.count(said) == 2  # not for the unchanged 12
    assert "the learning rate of the next step is 0.007322 instead of 0" in caplog.text


@pytest.mark.parametrize("native", [True, False])
def test_default_trainer_uses_amp_only_where_the_device_has_the_dtype(
    tmp_path, caplog, monkeypatch, native: bool
) -> None:
    cfg = tiny_cfg(str(tmp_path), **{"SOLVER.MAX_ITER": 1})
    assert cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.AMP.DTYPE == "auto"  # bfloat16 on a CPU
    monkeypatch.setattr(fima_logger, "_said_once", set())  # as in a fresh process
    with mock.patch("fima.engine.train_loop.native_autocast", return_value=native):
        trainer = DefaultTrainer(cfg)
        # A second run in the same process does not repeat the warning.
        assert resolve_amp(cfg.SOLVER.AMP, "cpu") == (native, torch.bfloat16)
        # What a benchmark's report says the run computed in.
        assert describe_amp(cfg.SOLVER.AMP, "cpu") == (
            "bfloat16 autocast" if native else "float32 (bfloat16 would be emulated on this cpu)"
        )
    assert trainer.amp is native
    warnings = [r for r in caplog.records if "computes in float32" in r.getMessage()]
    assert len(warnings) == (0 if native else 1)
    cfg.SOLVER.AMP.ENABLED = False
    assert resolve_amp(cfg.SOLVER.AMP, "cpu") == (False, torch.bfloat16)
    assert describe_amp(cfg.SOLVER.AMP, "cpu") == "float32"


def test_auto_amp_dtype_is_float16_on_a_gpu_and_bfloat16_elsewhere() -> None:
    """Resolved from the device's name alone, so this runs without a GPU."""
    cfg = tiny_cfg()
    assert cfg.SOLVER.AMP.DTYPE == "auto"
    assert autocast_dtype("auto", "cuda") == torch.float16
    assert autocast_dtype("auto", "cpu") == torch.bfloat16
    assert autocast_dtype("bfloat16", "cuda") == torch.bfloat16  # a named dtype is kept
    assert autocast_dtype("float16", "cuda") == torch.float16
    # float16 is native on every GPU, so no CUDA call is needed to resolve it.
    assert resolve_amp(cfg.SOLVER.AMP, "cuda") == (True, torch.float16)
    assert describe_amp(cfg.SOLVER.AMP, "cuda") == "float16 autocast"
    assert amp_dtype_name(cfg.SOLVER.AMP, "cuda") == "float16"
    assert amp_dtype_name(cfg.SOLVER.AMP, "cpu") == "bfloat16"
    validate_cfg(tiny_cfg(**{"SOLVER.AMP.DTYPE": "auto", "MODEL.DEVICE": "cpu"}))
    with pytest.raises(ConfigError, match="must be 'auto', 'bfloat16' or 'float16'"):
        validate_cfg(tiny_cfg(**{"SOLVER.AMP.DTYPE": "half"}))


def test_accumulation_updates_momentum_and_queue_once_per_optimizer_step(tmp_path) -> None:
    cfg = tiny_cfg(
        str(tmp_path),
        **{
            "SOLVER.ACCUM_STEPS": 2,
            "SOLVER.MAX_ITER": 2,
            "MODEL.MOCO.MOMENTUM": 0.99,
            "MODEL.MOCO.MOMENTUM_SCHEDULE": "cosine",
            # Only the training steps' encoder calls are counted: no pictures at the end.
            "VIS_PERIOD": 0,
        },
    )
    trainer = DefaultTrainer(cfg)
    method = trainer.method
    with (
        mock.patch.object(method, "momentum_update", wraps=method.momentum_update) as momentum,
        mock.patch.object(method, "update_queues", wraps=method.update_queues) as queues,
        mock.patch.object(method.encoder_q, "forward", wraps=method.encoder_q.forward) as encoder_q,
    ):
        trainer.train()
    assert momentum.call_count == queues.call_count == 2
    # The cosine schedule from the config: 0.99 at the start, halfway to 1 at the middle.
    assert [c.args[0] for c in momentum.call_args_list] == pytest.approx([0.99, 0.995])
    assert encoder_q.call_count == 4  # two micro-batches of 2 clips per step
    assert [c.args[0].shape[0] for c in encoder_q.call_args_list] == [4] * 4  # 2 windows x 2
    # All keys of a step (2 micro-batches x 2 windows x 2 clips) enqueued after it.
    assert int(method.queue.ptr) == 2 * 2 * cfg.SOLVER.IMS_PER_BATCH
    assert trainer.data_loader.position == 4


class RandomDraws(HookBase):
    def __init__(self) -> None:
        self.draws: list[float] = []

    def before_step(self) -> None:
        self.draws.append(float(torch.rand(())))


def test_evaluation_does_not_disturb_the_training_rng() -> None:
    def draws(with_eval: bool) -> list[float]:
        torch.manual_seed(0)
        model = ToyModel()
        trainer = SimpleTrainer(model, endless(), torch.optim.SGD(model.parameters(), lr=0.1))
        recorder = RandomDraws()

        def evaluate() -> dict[str, float]:
            return {"score": float(torch.rand(()))}

        trainer.register_hooks([recorder, EvalHook(1, evaluate) if with_eval else None])
        trainer.train(0, 4)
        return recorder.draws

    assert draws(with_eval=True) == draws(with_eval=False)


def test_resuming_with_another_model_config_lists_the_mismatched_keys(tmp_path) -> None:
    output = str(tmp_path)
    DefaultTrainer(tiny_cfg(output, **{"SOLVER.MAX_ITER": 1})).train()
    other = DefaultTrainer(tiny_cfg(output, **{"MODEL.PROJECTOR.OUT_DIM": 8}))
    with pytest.raises(CheckpointMismatchError) as info:
        other.resume_or_load(resume=True)
    assert "model_final.pth does not match the model" in str(info.value)
    assert "queue.keys: checkpoint (64, 16) vs model (64, 8)" in str(info.value)
    assert "projector_q.fc2.weight" in str(info.value)


@pytest.mark.parametrize(
    ("method", "queue_size", "warned"),
    [
        ("MoCo", 64, ["The instance queue"]),
        ("MoCo", 16, []),
        ("FIMA", 16, ["The motion queue", "The dense queue"]),
    ],
)
def test_queues_holding_an_epoch_of_keys_are_warned_about(
    tmp_path, caplog, method: str, queue_size: int, warned: list[str]
) -> None:
    # 16 training videos, 4 steps of 4 per epoch: 2 instance keys per video (32 an epoch); FIMA's
    # motion and dense queues keep the Kinetics sizes (65536, 31360), thousands of epochs here.
    cfg = tiny_cfg(
        str(tmp_path),
        **{
            "SOLVER.MAX_ITER": 2,
            "MODEL.META_ARCHITECTURE": method,
            "MODEL.MOCO.QUEUE_SIZE": queue_size,
        },
    )
    trainer = DefaultTrainer(cfg)
    assert trainer.iters_per_epoch == 4
    with caplog.at_level("WARNING", logger="fima.engine.hooks"):
        trainer.train()
    messages = [r.getMessage() for r in caplog.records if "epochs' worth" in r.getMessage()]
    assert [m.split(" holds ")[0] for m in messages] == warned  # not "Queue queue holds"


def test_precise_bn_changes_only_the_statistics_that_are_checkpointed(tmp_path) -> None:
    from fima.engine import hooks
    from tests.evaluation.helpers import classifier_cfg

    def run(enabled: bool) -> tuple[list[float], dict[str, torch.Tensor], DefaultTrainer, int]:
        out = tmp_path / str(enabled)
        cfg = classifier_cfg(
            str(out),
            **{
                "SOLVER.MAX_ITER": 4,
                "TEST.EVAL_PERIOD": 2,
                "TEST.PRECISE_BN.ENABLED": enabled,
                "TEST.PRECISE_BN.NUM_ITER": 3,
            },
        )
        cfg = default_setup(cfg, argparse.Namespace(resume=False, eval_only=False))
        trainer = DefaultTrainer(cfg)
        with mock.patch.object(hooks, "update_bn_stats", wraps=hooks.update_bn_stats) as spy:
            trainer.train()
        rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
        losses = [row["loss_cls"] for row in rows if "loss_cls" in row]
        final = torch.load(out / "model_final.pth", weights_only=True)["model"]
        return losses, final, trainer, spy.call_count

    plain_losses, plain, _, plain_calls = run(False)
    precise_losses, precise, trainer, precise_calls = run(True)
    assert (plain_calls, precise_calls) == (0, 2)  # at iteration 2 (the evaluation) and 4 (last)
    # Training is the same step for step (batch statistics, the same data and RNG draws) ...
    assert len(plain_losses) == 4 and precise_losses == plain_losses
    stats = [k for k in plain if k.endswith(("running_mean", "running_var", "batches_tracked"))]
    differ = [k for k in plain if k not in stats and not torch.equal(plain[k], precise[k])]
    assert stats and not differ, differ
    # ... and only the running statistics differ: recomputed, and saved in model_final.
    assert not all(torch.equal(plain[k], precise[k]) for k in stats)
    state = trainer.method.state_dict()
    assert all(torch.equal(precise[k], state[k]) for k in stats)


def test_precise_bn_is_refused_for_methods_with_side_effects() -> None:
    cfg = tiny_cfg(**{"TEST.PRECISE_BN.ENABLED": True})
    with pytest.raises(ConfigError, match="TEST.PRECISE_BN.ENABLED: MoCo does not support it"):
        validate_cfg(cfg)


def test_precise_bn_keeps_resume_exact(tmp_path) -> None:
    from tests.evaluation.helpers import classifier_cfg

    class Losses(HookBase):
        def __init__(self) -> None:
            self.losses: list[tuple[int, float]] = []

        def after_step(self) -> None:
            self.losses.append((self.trainer.iter, self.trainer.loss_dict["loss_cls"]))

    def run(name: str, resume: bool, stop_at: int | None = None):
        cfg = classifier_cfg(
            str(tmp_path / name),
            **{
                "SOLVER.MAX_ITER": 6,
                "SOLVER.CHECKPOINT_PERIOD": 3,
                "TEST.EVAL_PERIOD": 2,
                "TEST.PRECISE_BN.ENABLED": True,
                "TEST.PRECISE_BN.NUM_ITER": 2,
            },
        )
        cfg = default_setup(cfg, argparse.Namespace(resume=resume, eval_only=False))
        trainer, recorder = DefaultTrainer(cfg), Losses()
        trainer.register_hooks([recorder] + ([StopAt(stop_at)] if stop_at is not None else []))
        trainer.resume_or_load(resume=resume)
        with contextlib.suppress(KeyboardInterrupt):
            trainer.train()
        return trainer, recorder.losses

    straight, straight_losses = run("straight", resume=False)
    _, first = run("resumed", resume=False, stop_at=4)
    resumed, second = run("resumed", resume=True)
    assert resumed.start_iter == 3  # from the checkpoint of iteration 2, after a precise-BN pass
    assert first[:3] + second == straight_losses
    for name, tensor in straight.method.state_dict().items():
        assert torch.equal(tensor, resumed.method.state_dict()[name]), name


def scheduled_rates(cfg, max_iter: int, iters_per_epoch: int) -> list[float]:
    """The learning rate of each of ``max_iter`` iterations under ``cfg``'s schedule (base 0.1)."""
    optimizer = torch.optim.SGD(LinearModel().parameters(), lr=0.1)
    scheduler = build_lr_scheduler(
        cfg, optimizer, max_iter=max_iter, iters_per_epoch=iters_per_epoch
    )
    rates = []
    for _ in range(max_iter):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_an_epoch_schedule_holds_the_rate_within_each_epoch() -> None:
    """SCHEDULE_UNIT epoch (the default, as in the reference): the cosine moves at epoch
    boundaries only; SCHEDULE_UNIT iter moves it every iteration."""

    def rates(unit: str) -> list[float]:
        cfg = tiny_cfg(**{"SOLVER.LR_SCHEDULER": "cosine", "SOLVER.SCHEDULE_UNIT": unit})
        return scheduled_rates(cfg, max_iter=12, iters_per_epoch=3)

    cosine = CosineParamScheduler(1.0, 0.0)
    expected = [0.1 * cosine(3 * (i // 3) / 12) for i in range(12)]
    assert rates("epoch") == pytest.approx(expected, abs=1e-12)
    assert rates("iter") == pytest.approx([0.1 * cosine(i / 12) for i in range(12)], abs=1e-12)


def test_steps_beyond_the_run_are_announced(caplog) -> None:
    """A fine-tuning run shortened to 10 epochs kept the protocol's steps at 12 and 24: the
    rate stayed at BASE_LR to the end and nothing said so."""

    def schedule(steps: tuple[int, ...]) -> list[float]:
        cfg = tiny_cfg(**{"SOLVER.LR_SCHEDULER": "step", "SOLVER.STEPS": steps})
        return scheduled_rates(cfg, max_iter=30, iters_per_epoch=3)

    rates = schedule((4, 12, 24))
    assert rates[11] == pytest.approx(0.1) and rates[12] == pytest.approx(0.01)
    assert rates[-1] == pytest.approx(0.01)  # the steps at 12 and 24 fall after the run
    (warning,) = [r.getMessage() for r in caplog.records if "SOLVER.STEPS" in r.getMessage()]
    assert "ends after 10 epochs (30 iterations)" in warning and "(12, 24)" in warning
    caplog.clear()
    schedule((4, 8, 10))  # a step at the very end changes nothing, and is not warned about
    assert "SOLVER.STEPS" not in caplog.text


def test_resume_without_a_checkpoint_says_the_run_starts_over(tmp_path, caplog) -> None:
    """A mistyped OUTPUT_DIR with --resume must not start over silently."""
    cfg = tiny_cfg(str(tmp_path / "fresh"))
    cfg.freeze()
    trainer = DefaultTrainer(cfg)
    with caplog.at_level("WARNING", logger="fima.engine.defaults"):
        trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 0
    assert any(
        "--resume: OUTPUT_DIR" in r.getMessage() and "starts from scratch" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize(
    ("value", "recorded", "error"),
    [
        (torch.tensor(0.5), 0.5, None),  # a custom evaluator's 0-d tensor
        (np.float32(0.25), 0.25, None),
        ({"top1": 1.0}, None, "is not a number: an evaluator returns a flat"),
        (float("nan"), None, "is not finite"),
    ],
)
def test_evaluation_results_are_numbers(value, recorded, error) -> None:
    model = ToyModel()
    trainer = SimpleTrainer(model, endless(), torch.optim.SGD(model.parameters(), lr=0.1))
    hook = EvalHook(0, lambda: {"score": value})
    trainer.register_hooks([hook])
    if error is not None:
        with pytest.raises(ValueError, match=error):
            trainer.train(0, 1)
        return
    trainer.train(0, 1)
    assert hook.latest == {"score": recorded} and type(hook.latest["score"]) is float
    assert trainer.storage.history("score").latest() == recorded


def test_eval_only_reports_an_evaluators_tensors_as_floats_and_nan_as_it_is() -> None:
    class TensorEvaluator:
        def evaluate(self, model):
            return {"top1": torch.tensor(0.5), "empty_class": float("nan")}

    results = DefaultTrainer.test(tiny_cfg(), ToyModel(), TensorEvaluator())
    assert type(results["top1"]) is float and results["top1"] == 0.5
    assert math.isnan(results["empty_class"])
