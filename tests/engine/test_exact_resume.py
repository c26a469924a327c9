"""A real run killed with SIGKILL (in training, inside a checkpoint write) resumes bit for bit;
a truncated newest checkpoint falls back; a NaN loss stops the run and keeps the checkpoint.

Every run here is ``tools/train_net.py`` in a process of its own, on the CPU with 0 workers, the
6-iteration tiny quick start of :mod:`tests.engine.procs` (checkpoints after iterations 2 and 5).
"""

from __future__ import annotations

import os
import re
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
def first(tmp_path_factory) -> dict[str, tuple[str, int, str]]:
    """The first run of every test, started together (they are independent): the uninterrupted
    run of 2N = 6 iterations (with 0 and with 2 loader workers), a run killed in training (at the
    start of iteration 4), one killed inside the write of the checkpoint of iteration 5, one
    whose loss is NaN at iteration 4.

    Returns:
        ``{name: (test_dir, exit code, output)}``; a killed run's exit code is -9.
    """
    jobs = {
        "straight": ((), {}),
        "straight_2_workers": (("DATA.NUM_WORKERS", "2"), {}),
        "killed_in_training": ((), {"FIMA_TEST_PAUSE_AT": "4"}),
        "killed_in_save": ((), {"FIMA_TEST_PAUSE_IN_SAVE": "5"}),
        "nan": (("MODEL.META_ARCHITECTURE", "NaNFIMA", "TEST_FAULT.NAN_ITER", "4"), {}),
    }
    runs = {}
    for name, (opts, env) in jobs.items():
        test_dir = str(tmp_path_factory.mktemp(name))
        runs[name] = train_net(test_dir, *train_net_args(f"{test_dir}/out", *opts), **env)
    try:
        for name in ("killed_in_training", "killed_in_save"):
            runs[name].wait_paused()
            runs[name].kill()
        results = {name: (run.test_dir, run.wait(), run.output) for name, run in runs.items()}
    finally:
        for run in runs.values():
            run.kill()
    for name in ("straight", "straight_2_workers"):
        assert results[name][1] == 0, results[name][2]
    assert [it for it, _ in read_losses(results["straight"][0])] == list(range(MAX_ITER))
    return results


@pytest.fixture(scope="module")
def straight(first) -> str:
    return first["straight"][0]


def test_loader_workers_do_not_change_the_run(first, straight: str) -> None:
    """Every sample is drawn from its own seeded generator, so the batches, and with them the
    whole run, are the same whatever the number of workers."""
    with_workers = first["straight_2_workers"][0]
    assert read_losses(with_workers) == read_losses(straight)
    assert_same_state(final_state(with_workers), final_state(straight))


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
    first, straight: str
) -> None:
    test_dir, _, _ = first["killed_in_training"]
    out = os.path.join(test_dir, "out")
    # Killed at the start of iteration 4: the checkpoint of iteration 2 is the newest.
    assert _pointer(out) == "model_0000002.pth"
    train_net(test_dir, "--resume", *train_net_args(out), name="resumed").wait_ok()
    _assert_continued_exactly(straight, test_dir, [0, 1, 2, 3, 3, 4, 5])


def test_sigkill_inside_a_checkpoint_write_leaves_the_previous_one_loadable(
    first, straight: str
) -> None:
    test_dir, _, _ = first["killed_in_save"]
    out = os.path.join(test_dir, "out")
    # Killed with half of model_0000005.pth in its temporary file.
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
    first, straight: str
) -> None:
    test_dir, code, output = first["nan"]
    out = os.path.join(test_dir, "out")
    assert code not in (0, -9)
    # Every term is named; the NaN is in the instance term.
    assert re.search(
        r"Loss became non-finite at iteration 4 \(loss_dense=\S+, loss_inst=nan,", output
    )
    assert [it for it, _ in read_losses(test_dir)] == [0, 1, 2, 3]
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == ["model_0000002.pth"]
    assert _pointer(out) == "model_0000002.pth"
    kept = torch.load(os.path.join(out, "model_0000002.pth"), weights_only=True)
    reference = torch.load(os.path.join(straight, "out", "model_0000002.pth"), weights_only=True)
    assert kept["iteration"] == 2
    assert_same_state(kept["model"], reference["model"])
