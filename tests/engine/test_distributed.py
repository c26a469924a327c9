"""Real multi-process runs on 127.0.0.1 with gloo: ``--num-gpus 2``, torchrun, two "machines";
identical queues and weights, one set of output files, exact resume of 2 ranks, the NaN guard on
2 ranks, and no hang when a rank dies or stops responding."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.engine.procs import (
    MAX_ITER,
    Run,
    assert_same_state,
    final_state,
    free_port,
    read_losses,
    torchrun,
    train_net,
    train_net_args,
)

TWO = ("--num-gpus", "2")


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> dict[str, tuple[str, int, str]]:
    """The first run of every 2-rank job, started together (they are independent): the
    uninterrupted run with ``--num-gpus 2``, the same under torchrun and as two "machines", a
    run killed at the start of iteration 4, one whose loss is NaN at iteration 4 on rank 1.

    Returns:
        ``{name: (test_dir, exit code, output)}`` (the machines' outputs concatenated).
    """
    dirs = {
        name: str(tmp_path_factory.mktemp(name))
        for name in ("spawn", "torchrun", "machines", "killed", "nan")
    }
    url = f"tcp://127.0.0.1:{free_port()}"
    nan = ("MODEL.META_ARCHITECTURE", "NaNFIMA", "TEST_FAULT.NAN_ITER", "4")
    runs = {
        "spawn": [train_net(dirs["spawn"], *train_net_args(f"{dirs['spawn']}/out", launcher=TWO))],
        "torchrun": [torchrun(dirs["torchrun"], 2, *train_net_args(f"{dirs['torchrun']}/out"))],
        "machines": [
            train_net(
                dirs["machines"],
                *train_net_args(
                    f"{dirs['machines']}/out",
                    launcher=("--num-machines", "2", "--machine-rank", str(r), "--dist-url", url),
                ),
                name=f"machine{r}",
            )
            for r in (0, 1)
        ],
        "killed": [
            train_net(
                dirs["killed"],
                *train_net_args(f"{dirs['killed']}/out", launcher=TWO),
                FIMA_TEST_PAUSE_AT="4",
            )
        ],
        "nan": [
            train_net(
                dirs["nan"],
                *train_net_args(
                    f"{dirs['nan']}/out", *nan, "TEST_FAULT.NAN_RANK", "1", launcher=TWO
                ),
            )
        ],
    }
    try:
        runs["killed"][0].wait_paused(ranks=(0, 1))
        runs["killed"][0].kill()
        results = {}
        for name, group in runs.items():
            codes = [run.wait() for run in group]
            results[name] = (dirs[name], max(codes, key=abs), "".join(r.output for r in group))
    finally:
        for group in runs.values():
            for run in group:
                run.kill()
    for name in ("spawn", "torchrun", "machines"):
        assert results[name][1] == 0, results[name][2]
    return results


@pytest.fixture(scope="module")
def spawn2(first) -> str:
    return first["spawn"][0]


def test_two_processes_hold_identical_queues_and_weights_and_write_one_set_of_files(
    spawn2: str,
) -> None:
    for rank in (0, 1):
        assert [it for it, _ in read_losses(spawn2, rank)] == list(range(MAX_ITER))
    # The ranks saw different clips (their losses differ) ...
    assert read_losses(spawn2, 0) != read_losses(spawn2, 1)
    # ... but every parameter, the key encoder, the queue and its pointer and the optimizer state
    # are identical. BatchNorm running statistics are per rank, as in MoCo.
    rank0, rank1 = final_state(spawn2, 0), final_state(spawn2, 1)
    assert_same_state(rank0, rank1, skip=("running_mean", "running_var"))
    assert any(
        not (rank0["model"][k] == rank1["model"][k]).all()
        for k in rank0["model"]
        if "running_mean" in k
    )
    files = sorted(os.listdir(os.path.join(spawn2, "out")))
    events = [f for f in files if f.startswith("events.out.tfevents")]
    assert len(events) == 1
    assert [f for f in files if f not in events] == [
        ".lock",
        "config.yaml",
        "last_checkpoint",
        "log.txt",
        "metrics.json",
        "model_0000002.pth",
        "model_0000005.pth",
        "model_final.pth",
    ]


def test_torchrun_without_flags_runs_the_same_job(first, spawn2: str) -> None:
    test_dir = first["torchrun"][0]
    for rank in (0, 1):
        assert read_losses(test_dir, rank) == read_losses(spawn2, rank)
    assert_same_state(final_state(test_dir, 0), final_state(spawn2, 0))


def test_two_machines_rendezvous_at_dist_url(first, spawn2: str) -> None:
    test_dir = first["machines"][0]
    rank0, rank1 = final_state(test_dir, 0), final_state(test_dir, 1)
    assert_same_state(rank0, rank1, skip=("running_mean", "running_var"))
    for rank in (0, 1):
        assert [it for it, _ in read_losses(test_dir, rank)] == list(range(MAX_ITER))
    # The same job as --num-gpus 2, to the bit (every process runs one thread).
    for rank in (0, 1):
        assert read_losses(test_dir, rank) == read_losses(spawn2, rank)


def test_two_processes_resume_bit_identically_after_sigkill(first, spawn2: str) -> None:
    test_dir = first["killed"][0]
    out = os.path.join(test_dir, "out")
    train_net(test_dir, *train_net_args(out, launcher=(*TWO, "--resume")), name="resumed").wait_ok()
    for rank in (0, 1):
        # Each rank's own RNG states and BatchNorm statistics were restored: it continues
        # exactly.
        expected = dict(read_losses(spawn2, rank))
        recorded = read_losses(test_dir, rank)
        assert [it for it, _ in recorded] == [0, 1, 2, 3, 3, 4, 5]
        assert all(terms == expected[it] for it, terms in recorded)
        assert_same_state(final_state(test_dir, rank), final_state(spawn2, rank))


def test_nan_on_one_rank_stops_both_at_that_iteration(first) -> None:
    test_dir, code, output = first["nan"]
    assert code not in (0, -9)
    assert re.search(r"non-finite at iteration 4 \(rank 1: loss_dense=\S+, loss_inst=nan,", output)
    for rank in (0, 1):
        assert [it for it, _ in read_losses(test_dir, rank)] == [0, 1, 2, 3]
    pth = sorted(f for f in os.listdir(os.path.join(test_dir, "out")) if f.endswith(".pth"))
    assert pth == ["model_0000002.pth"]


def test_killing_one_of_two_processes_stops_the_other(tmp_path) -> None:
    """The launcher notices the dead rank and stops the other one itself: with a collective
    timeout far longer than the run may take to exit, the survivor cannot be the one that
    gives up (it would report a timeout, after 10 minutes)."""
    test_dir = str(tmp_path)
    launcher = (*TWO, "--dist-timeout", "600")
    run = train_net(
        test_dir,
        *train_net_args(str(tmp_path / "out"), launcher=launcher),
        FIMA_TEST_PAUSE_AT="2",
        FIMA_TEST_PAUSE_RANK="1",
    )
    (pid,) = run.wait_paused(ranks=(1,))
    os.kill(pid, 9)
    assert run.wait(timeout=120) != 0
    assert "terminated with signal SIGKILL" in run.output
    assert "Timed out" not in run.output, run.output


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_rank_on_another_machine_that_dies_or_hangs_does_not_hang_the_other(
    fault: str, tmp_path
) -> None:
    """Machine 1's only rank stops at iteration 2 and is killed, or stays stopped (a hang);
    machine 0 must exit with an error either way: at once for a dead peer (its connection
    closes; the collective timeout is set far longer than the run may take to exit), when the
    collective timeout expires for a hung one."""
    timeout = 600 if fault == "killed" else 10
    test_dir, out = str(tmp_path), str(tmp_path / "out")
    url = f"tcp://127.0.0.1:{free_port()}"

    def machine(rank: int, **env: str):
        launcher = ("--num-machines", "2", "--machine-rank", str(rank), "--dist-url", url)
        launcher += ("--dist-timeout", str(timeout))
        return train_net(
            test_dir, *train_net_args(out, launcher=launcher), name=f"machine{rank}", **env
        )

    survivor = machine(0)
    victim = machine(1, FIMA_TEST_PAUSE_AT="2")
    try:
        victim.wait_paused(ranks=(1,))
        if fault == "killed":
            victim.kill()
        assert survivor.wait(timeout=120) != 0
    finally:
        victim.kill()
    # What machine 0 reports says which of the two it noticed.
    expected = (
        r"Connection (closed|reset) by peer"
        if fault == "killed"
        else rf"Timed out waiting {timeout * 1000}ms"
    )
    assert re.search(expected, survivor.output), survivor.output


def test_sigint_to_the_launcher_alone_stops_the_ranks(tmp_path) -> None:
    """``kill -INT`` of the launcher (not of its process group, as Ctrl-C would) still stops
    both spawned ranks, after the grace they get to stop by themselves, instead of the launcher
    waiting for them to train to the end."""
    code = (
        "import importlib, tests.engine.procs as procs; "
        "launch = importlib.import_module('fima.engine.launch'); "
        "launch.INTERRUPT_GRACE_SECONDS = 1; "
        f"launch.launch(procs.mark_started_and_wait, 2, backend='gloo', args=({str(tmp_path)!r},))"
    )
    run = Run(str(tmp_path), ["-c", code], name="launcher")
    markers = [tmp_path / f"started.rank{r}" for r in (0, 1)]
    deadline = time.monotonic() + 120
    while not all(m.is_file() and m.stat().st_size for m in markers):
        assert run.proc.poll() is None and time.monotonic() < deadline, run.output
        time.sleep(0.1)
    ranks = [int(m.read_text()) for m in markers]
    os.kill(run.proc.pid, signal.SIGINT)
    try:
        assert run.wait(timeout=30) != 0
    finally:
        run.kill()
    for pid in ranks:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
