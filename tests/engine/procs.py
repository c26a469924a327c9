"""Helpers of the multi-process tests: ``tools/train_net.py`` runs as real processes on 127.0.0.1.

A :class:`Run` starts one command (``python tools/train_net.py``, ``--num-gpus 2``, torchrun, or
one "machine" of a multi-machine job) in its own session, with :mod:`tests.engine.fault_injection`
loaded, so that a test can wait until the run pauses where it asked, SIGKILL the whole process
group, and read the exact per-iteration losses the ranks recorded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
FAULTS = os.path.join(ROOT, "tests", "engine", "fault_injection.py")
# FIMA covers MoCo's state (key encoder, instance queue) and adds its own (motion queue, decoder
# with dropout, local views), so exact resume and fault handling are checked on all of it.
QUICKSTART = os.path.join(ROOT, "configs", "Quickstart", "fima_synthetic.yaml")
MAX_ITER = 6
# The FIMA quick start, shrunk: 6 iterations of 4 clips, a checkpoint after iterations 2 and 5.
TINY = [
    "MODEL.TINY3D.WIDTHS", "(8,16,16,32)",
    "MODEL.PROJECTOR.HIDDEN_DIM", "32", "MODEL.PROJECTOR.OUT_DIM", "16",
    "MODEL.MOCO.QUEUE_SIZE", "64", "MODEL.FIMA.MOTION_QUEUE_SIZE", "32",
    "MODEL.MOTION_DECODER.DIM", "16", "MODEL.MOTION_DECODER.FFN_DIM", "16",
    "INPUT.NUM_FRAMES", "8", "INPUT.CROP_SIZE", "32",
    "DATA.NUM_WORKERS", "0",
    "DATA.SYNTHETIC.CLASSES", "('SlideHorizontal','SlideUp','SlideDown','Circle')",
    "DATA.SYNTHETIC.VIDEOS_PER_CLASS", "6", "DATA.SYNTHETIC.TEST_GROUPS", "2",
    "DATA.SYNTHETIC.NUM_FRAMES", "40", "DATA.SYNTHETIC.HEIGHT", "48", "DATA.SYNTHETIC.WIDTH", "64",
    "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", str(MAX_ITER),
    "SOLVER.CHECKPOINT_PERIOD", "3", "LOG_PERIOD", "1",
]  # fmt: skip


def mark_started_and_wait(marker_dir: str) -> None:
    """A rank's main function for launcher tests: write ``started.rank<r>`` (its pid), then
    wait until stopped."""
    from fima.utils import comm

    with open(os.path.join(marker_dir, f"started.rank{comm.get_rank()}"), "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_net_args(output_dir: str, *opts: str, launcher: tuple[str, ...] = ()) -> list[str]:
    """``tools/train_net.py`` arguments for the tiny quick start (launcher flags first)."""
    return [
        *launcher,
        "--import",
        FAULTS,
        "--config-file",
        QUICKSTART,
        "OUTPUT_DIR",
        output_dir,
        *TINY,
        *opts,
    ]


class Run:
    """One command started in a new session; its output goes to ``<test_dir>/<name>.log``.

    Args:
        test_dir: ``FIMA_TEST_DIR`` of the run (losses, markers, final states).
        args: the command's arguments after the interpreter: ``[script, ...]`` or
            ``["-m", "torch.distributed.run", ...]``.
        name: the log file's name.
        env: extra environment variables (``FIMA_TEST_PAUSE_AT``, ...).
    """

    def __init__(
        self, test_dir: str, args: list[str], name: str = "run", env: dict[str, str] | None = None
    ) -> None:
        os.makedirs(test_dir, exist_ok=True)
        self.test_dir = test_dir
        self.log_path = os.path.join(test_dir, f"{name}.log")
        self._log = open(self.log_path, "w")  # noqa: SIM115  (closed in wait/kill)
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # One thread per process: runs are as fast as they can be on a shared machine, and
            # launchers that would give a process more threads get bit-identical results.
            env={**os.environ, "OMP_NUM_THREADS": "1", "FIMA_TEST_DIR": test_dir, **(env or {})},
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def wait(self, timeout: float = 240) -> int:
        """Wait for the exit; on timeout kill everything and fail."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"run did not finish in {timeout} s:\n{self.output}") from None
        finally:
            self._log.close()

    def wait_ok(self, timeout: float = 240) -> None:
        code = self.wait(timeout)
        assert code == 0, f"exit code {code}:\n{self.output}"

    def wait_paused(self, ranks: tuple[int, ...] = (0,), timeout: float = 240) -> list[int]:
        """Wait until the given ranks have paused (fault_injection); return their pids."""
        deadline = time.monotonic() + timeout
        paths = [os.path.join(self.test_dir, f"paused.rank{r}") for r in ranks]
        while not all(os.path.isfile(p) and os.path.getsize(p) for p in paths):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"run did not pause (exit {self.proc.poll()}):\n{self.output}")
            time.sleep(0.1)
        pids = []
        for path in paths:
            with open(path) as f:
                pids.append(int(f.read()))
            os.unlink(path)
        return pids

    def kill(self) -> None:
        """SIGKILL the whole process group (launcher and every rank), as a crash would."""
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()


def train_net(test_dir: str, *args: str, name: str = "run", **env: str) -> Run:
    """Start ``tools/train_net.py *args`` (see :func:`train_net_args`)."""
    return Run(test_dir, [TRAIN_NET, *args], name=name, env=env)


def torchrun(test_dir: str, nproc: int, *args: str, name: str = "torchrun") -> Run:
    """Start ``torchrun --standalone --nproc_per_node N tools/train_net.py *args``."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return Run(test_dir, [*launcher, TRAIN_NET, *args], name=name)


def read_losses(test_dir: str, rank: int = 0) -> list[tuple[int, str]]:
    """``(iteration, exact loss terms)`` of every step a rank recorded, in order."""
    path = os.path.join(test_dir, f"losses.rank{rank}.txt")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [(int(it), terms) for it, terms in (line.split(" ", 1) for line in f)]


def final_state(test_dir: str, rank: int = 0) -> dict:
    """The model and optimizer state a rank saved at the end of a completed run."""
    return torch.load(os.path.join(test_dir, f"state.rank{rank}.pth"), weights_only=True)


def assert_same_state(a: dict, b: dict, skip: tuple[str, ...] = ()) -> None:
    """Every tensor of two (nested) state dicts is bit-identical, except keys containing
    one of ``skip``."""
    assert a.keys() == b.keys()
    for key in a:
        if any(s in str(key) for s in skip):
            continue
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key], skip)
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key
