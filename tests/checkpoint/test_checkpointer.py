"""Atomic writes, weights_only loads, strict resume with a mismatch message, fallback past
unreadable files, per-rank state, stale temporary files and checkpoint retention."""

from __future__ import annotations

import logging
import os
import shutil
import stat
from unittest import mock

import pytest
import torch
from torch import nn

from fima.checkpoint import (
    Checkpointer,
    CheckpointMismatchError,
    CheckpointReadError,
    CheckpointWriteError,
    atomic_write,
)
from fima.engine.hooks import PeriodicCheckpointer


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path) -> None:
    path = str(tmp_path / "file.bin")
    atomic_write(path, lambda f: f.write(b"old"))

    def half_then_fail(f) -> None:
        f.write(b"new but not")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert (tmp_path / "file.bin").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


class Counter:
    """A checkpointable with shared state and per-rank state."""

    def __init__(self, value: int = 0, local: int = 0) -> None:
        self.value, self.local = value, local

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]

    def rank_state_dict(self) -> dict:
        return {"local": self.local}

    def load_rank_state_dict(self, state: dict) -> None:
        self.local = state["local"]


def _checkpointer(tmp_path, model: nn.Module | None = None, counter: Counter | None = None):
    return Checkpointer(model or nn.Linear(3, 2), str(tmp_path), counter=counter or Counter())


def test_resume_restores_model_checkpointables_and_rank_state(tmp_path) -> None:
    model = nn.Linear(3, 2)
    _checkpointer(tmp_path, model, Counter(7, local=3)).save("model_0000004", iteration=4)
    saved = torch.load(tmp_path / "model_0000004.pth", weights_only=True)
    assert saved["rank_states"] == {"counter": [{"local": 3}]}
    other, counter = nn.Linear(3, 2), Counter()
    extra = _checkpointer(tmp_path, other, counter).resume()
    assert extra["iteration"] == 4
    assert (counter.value, counter.local) == (7, 3)
    assert torch.equal(other.weight, model.weight)


def test_rank_state_of_another_world_size_is_not_restored(tmp_path, caplog) -> None:
    _checkpointer(tmp_path, counter=Counter(1, local=5)).save("model_0000000", iteration=0)
    path = tmp_path / "model_0000000.pth"
    data = torch.load(path, weights_only=True)
    data["rank_states"]["counter"].append({"local": 6})  # as if written by 2 processes
    torch.save(data, path)
    counter = Counter()
    with caplog.at_level(logging.WARNING):
        _checkpointer(tmp_path, counter=counter).resume()
    assert (counter.value, counter.local) == (1, 0)
    assert "written by 2 processes, this run has 1" in caplog.text


def test_truncated_newest_falls_back_with_a_warning_naming_it(tmp_path, caplog) -> None:
    model = nn.Linear(3, 2)
    checkpointer = _checkpointer(tmp_path, model)
    checkpointer.save("model_0000001", iteration=1)
    with torch.no_grad():
        model.weight.add_(1)
    checkpointer.save("model_0000003", iteration=3)
    newest = tmp_path / "model_0000003.pth"
    newest.write_bytes(newest.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        extra = _checkpointer(tmp_path).resume()
    assert extra["iteration"] == 1
    assert f"Cannot read checkpoint {newest}" in caplog.text
    # --eval-only --resume evaluates the same file as resuming would train from, reading it
    # once (it read the chosen file a second time to load it: twice a large checkpoint).
    evaluated = nn.Linear(3, 2)
    with mock.patch("torch.load", wraps=torch.load) as load:
        chosen = _checkpointer(tmp_path, evaluated).load_newest(evaluation=True)
    assert chosen == str(tmp_path / "model_0000001.pth")
    assert [call.args[0] for call in load.call_args_list] == [str(newest), chosen]
    assert torch.allclose(evaluated.weight, model.weight - 1)
    assert _checkpointer(tmp_path / "empty").load_newest() is None


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path) -> None:
    checkpointer = _checkpointer(tmp_path)
    assert checkpointer.resume() is None  # nothing there: start from scratch
    checkpointer.save("model_0000001", iteration=1)
    (tmp_path / "model_0000001.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointReadError, match="None of the checkpoints"):
        checkpointer.resume()
    with pytest.raises(CheckpointReadError, match="None of the checkpoints"):
        checkpointer.load_newest()


def test_checkpoint_of_another_model_config_lists_the_mismatched_keys(tmp_path) -> None:
    _checkpointer(tmp_path, nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))).save(
        "model_final", iteration=9
    )
    other = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Linear(2, 1))
    with pytest.raises(CheckpointMismatchError) as info:
        _checkpointer(tmp_path, other).resume()
    message = str(info.value)
    assert "does not match the model" in message
    assert "missing: 3.bias, 3.weight" in message
    assert "0.weight: checkpoint (2, 3) vs model (4, 3)" in message


class Payload:
    """Not a tensor, number, string or container: weights_only must refuse to build it."""


def test_loading_never_unpickles_arbitrary_objects(tmp_path) -> None:
    checkpointer = _checkpointer(tmp_path)
    torch.save({"model": nn.Linear(3, 2).state_dict(), "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="[Ww]eights.only"):
        checkpointer._load_file(str(tmp_path / "evil.pth"))


def test_resume_removes_what_killed_writes_left(tmp_path) -> None:
    checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_0000001", iteration=1)
    (tmp_path / ".model_0000003.pth.abc123_x.tmp").write_bytes(b"half")
    (tmp_path / ".last_checkpoint.q1w2e3.tmp").write_text("model_00")
    (tmp_path / ".notes.tmp").write_text("not ours")
    assert checkpointer.resume()["iteration"] == 1
    assert sorted(os.listdir(tmp_path)) == [".notes.tmp", "last_checkpoint", "model_0000001.pth"]


class _Trainer:
    def __init__(self, max_iter: int) -> None:
        self.max_iter, self.iter, self.start_iter = max_iter, 0, 0
        self.continues_finished_run = False


def test_periodic_checkpointer_keeps_the_newest_and_the_final(tmp_path) -> None:
    hook = PeriodicCheckpointer(_checkpointer(tmp_path), period=2, max_to_keep=2)
    hook.trainer = _Trainer(max_iter=10)
    hook.before_train()
    for iteration in range(10):
        hook.trainer.iter = iteration
        hook.after_step()
    names = sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth"))
    assert names == ["model_0000007.pth", "model_0000009.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_a_full_disk_names_the_checkpoint_and_the_one_intact(tmp_path, monkeypatch) -> None:
    """A checkpoint written onto a full disk stopped the run with torch's
    'RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 404864 vs 404752'
    (torch.save reports the short write without errno)."""
    checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_0000001", iteration=1)
    written = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_save = torch.save

    def short_write(obj: object, f) -> None:
        f.write(b"part of a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 20 vs 8")

    free = {"bytes": 10 << 30}
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(torch, "save", short_write)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=free["bytes"]))
    # Not for want of space: torch's error as it is.
    with pytest.raises(RuntimeError, match="unexpected pos"):
        checkpointer.save("model_0000003", iteration=3)
    free["bytes"] = 4096
    with pytest.raises(CheckpointWriteError) as info:
        checkpointer.save("model_0000003", iteration=3)
    assert str(info.value) == (
        f"Cannot write checkpoint {tmp_path / 'model_0000003.pth'}: No space left on device; "
        f"the newest checkpoint, {tmp_path / 'model_0000001.pth'}, is intact: make room, then "
        "continue with --resume"
    )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == written
    monkeypatch.setattr(torch, "save", real_save)
    assert _checkpointer(tmp_path).resume()["iteration"] == 1


def test_a_pointer_to_a_missing_checkpoint_is_warned_about(tmp_path, caplog) -> None:
    """last_checkpoint naming a checkpoint that was moved or deleted: --resume silently took an
    older one, or trained from iteration 0 when none was left."""
    checkpointer = _checkpointer(tmp_path)
    checkpointer.save("model_0000001", iteration=1)
    checkpointer.save("model_0000003", iteration=3)
    os.unlink(tmp_path / "model_0000003.pth")
    with caplog.at_level(logging.WARNING):
        assert _checkpointer(tmp_path).resume()["iteration"] == 1
    assert (
        f"last_checkpoint in {tmp_path} names model_0000003.pth, which is not there; taking the "
        f"newest checkpoint there, {tmp_path / 'model_0000001.pth'}"
    ) in caplog.text
    os.unlink(tmp_path / "model_0000001.pth")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _checkpointer(tmp_path).resume() is None
    assert "there is no checkpoint to continue from" in caplog.text
