"""A real run killed with SIGKILL (in training, inside a checkpoint write) resumes bit for bit;
a truncated newest checkpoint falls back; a NaN loss stops the run and keeps the checkpoint.

Every run here is ``tools/train_net.py`` in a process of its own, on the CPU with 0 workers, the
6-iteration tiny quick start of :mod:`tests.engine.procs` (checkpoints after iterations 2 and 5).
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from tests.engine.procs import (
    MAX_ITER,
    assert_same_state,
    final_state,
    read_losses,
    train_net,
    train_net_args,
)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> str:
    """The uninterrupted run of 2N = 6 iterations."""
    test_dir = str(tmp_path_factory.mktemp("straight"))
    train_net(test_dir, *train_net_args(os.path.join(test_dir, "out"))).wait_ok()
    assert [it for it, _ in read_losses(test_dir)] == list(range(MAX_ITER))
    return test_dir


def _pointer(out: str) -> str:
    with open(os.path.join(out, "last_checkpoint")) as f:
        return f.read()


def _assert_continued_exactly(straight: str, test_dir: str, iterations: list[int]) -> None:
    """The killed and the resumed run recorded ``iterations`` (in order), each with exactly the
    uninterrupted run's losses, and ended with its weights, queues and optimizer state."""
    expected = dict(read_losses(straight))
    recorded = read_losses(test_dir)
    assert [it for it, _ in recorded] == iterations
    for iteration, terms in recorded:
        assert terms == expected[iteration], iteration
    assert_same_state(final_state(test_dir), final_state(straight))
    final = torch.load(os.path.join(test_dir, "out", "model_final.pth"), weights_only=True)
    reference = torch.load(os.path.join(straight, "out", "model_final.pth"), weights_only=True)
    assert_same_state(final["model"], reference["model"])


def test_sigkill_in_training_then_resume_gives_identical_losses_and_weights(
    straight: str, tmp_path
) -> None:
    test_dir, out = str(tmp_path), str(tmp_path / "out")
    run = train_net(test_dir, *train_net_args(out), FIMA_TEST_PAUSE_AT="4")
    run.wait_paused()
    run.kill()  # iteration 4 had started; the checkpoint of iteration 2 is the newest
    assert _pointer(out) == "model_0000002.pth"
    train_net(test_dir, "--resume", *train_net_args(out), name="resumed").wait_ok()
    _assert_continued_exactly(straight, test_dir, [0, 1, 2, 3, 3, 4, 5])


def test_sigkill_inside_a_checkpoint_write_leaves_the_previous_one_loadable(
    straight: str, tmp_path
) -> None:
    test_dir, out = str(tmp_path), str(tmp_path / "out")
    run = train_net(test_dir, *train_net_args(out), FIMA_TEST_PAUSE_IN_SAVE="5")
    run.wait_paused()
    run.kill()  # half of model_0000005.pth is in its temporary file
    partial = [f for f in os.listdir(out) if f.startswith(".model_0000005.pth.")]
    assert len(partial) == 1 and os.path.getsize(os.path.join(out, partial[0])) > 0
    assert not os.path.exists(os.path.join(out, "model_0000005.pth"))
    assert _pointer(out) == "model_0000002.pth"
    resumed = train_net(test_dir, "--resume", *train_net_args(out), name="resumed")
    resumed.wait_ok()
    assert "Removed unfinished writes" in resumed.output
    assert not any(f.endswith(".tmp") for f in os.listdir(out))
    _assert_continued_exactly(straight, test_dir, [0, 1, 2, 3, 4, 3, 4, 5])


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(
    straight: str, tmp_path
) -> None:
    test_dir, out = str(tmp_path), str(tmp_path / "out")
    shutil.copytree(os.path.join(straight, "out"), out)
    os.unlink(os.path.join(out, "model_final.pth"))
    newest = os.path.join(out, "model_0000005.pth")
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 3)
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000005.pth")
    resumed = train_net(test_dir, "--resume", *train_net_args(out), name="resumed")
    resumed.wait_ok()
    assert f"Cannot read checkpoint {newest}" in resumed.output
    assert "Resuming from " + os.path.join(out, "model_0000002.pth") in resumed.output
    _assert_continued_exactly(straight, test_dir, [3, 4, 5])


def test_nan_loss_stops_the_run_at_that_iteration_and_keeps_the_checkpoint(
    straight: str, tmp_path
) -> None:
    test_dir, out = str(tmp_path), str(tmp_path / "out")
    opts = ("MODEL.META_ARCHITECTURE", "NaNMoCo", "TEST_FAULT.NAN_ITER", "4")
    run = train_net(test_dir, *train_net_args(out, *opts))
    assert run.wait() != 0
    assert "Loss became non-finite at iteration 4 (loss_inst=nan)" in run.output
    assert [it for it, _ in read_losses(test_dir)] == [0, 1, 2, 3]
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == ["model_0000002.pth"]
    assert _pointer(out) == "model_0000002.pth"
    kept = torch.load(os.path.join(out, "model_0000002.pth"), weights_only=True)
    reference = torch.load(os.path.join(straight, "out", "model_0000002.pth"), weights_only=True)
    assert kept["iteration"] == 2
    assert_same_state(kept["model"], reference["model"])
