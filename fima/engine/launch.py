"""``launch``: run a main function in 1..N processes on one or many machines, or under torchrun.

- One process: ``main_func(*args)`` is called directly, no process group.
- ``--num-gpus N`` on one machine: N processes are spawned (one per GPU, or N gloo processes on a
  CPU-only machine) that rendezvous at ``--dist-url`` (``auto``: a free local port).
- Many machines: every machine runs the same command with its ``--machine-rank`` and a shared
  ``--dist-url tcp://HOST:PORT`` (an address of machine 0 that the others can reach). With one
  process per machine the launching process itself is the rank.
- Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment) no flag is
  needed: each process joins the group torchrun describes.

The backend is NCCL when GPUs are visible, else gloo; ``backend="gloo"`` (``--dist-backend gloo``)
runs the processes on the CPU of a GPU machine. Every collective times out after ``timeout``: a
rank whose peer died fails at once (gloo sees the closed connection; the NCCL watchdog aborts),
one whose peer hangs fails when the timeout expires, and the launcher then stops the remaining
processes. Gloo processes on one machine share its cores (``torch.set_num_threads``), unless
``OMP_NUM_THREADS`` says how many threads each should use.
"""

from __future__ import annotations

import datetime
import errno
import logging
import math
import os
import signal
import socket
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fima.utils import comm
from fima.utils.env import threads_per_process

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)
# Seconds that the ranks of an interrupted launcher get to stop by themselves before they are
# sent SIGINT, and then before they are killed (see stop_interrupted).
INTERRUPT_GRACE_SECONDS = 10.0


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another env:// launcher)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int = 1,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: tuple[Any, ...] = (),
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
    backend: str = "auto",
) -> Any:
    """Run ``main_func(*args)`` in every process of the job; see the module docstring.

    Args:
        main_func: the function to run (must be importable: it is pickled for spawning).
        num_gpus_per_machine: processes per machine.
        num_machines: machines in the job.
        machine_rank: this machine's rank (0 .. num_machines - 1).
        dist_url: rendezvous URL; ``"auto"`` picks a free local port (one machine only).
        args: arguments of ``main_func``.
        timeout: limit of any collective operation (and of the rendezvous).
        backend: ``"nccl"``, ``"gloo"``, or ``"auto"``: NCCL when a GPU is visible, else gloo.

    Returns:
        ``main_func``'s return value where it ran in this process (one process per machine, or
        under torchrun), else None.

    Raises:
        SystemExit: a spawned process exited with an error code or was killed; the launcher
            has stopped the others.
    """
    backend = resolve_backend(backend)
    if launched_by_torchrun():
        if num_gpus_per_machine > 1 or num_machines > 1:
            logger.warning("Under torchrun, --num-gpus and --num-machines are ignored")
        return _run_under_torchrun(main_func, args, timeout, backend)
    check_launch_arguments(
        num_gpus_per_machine, num_machines, machine_rank, dist_url, timeout.total_seconds()
    )
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        return main_func(*args)
    if dist_url is None or dist_url == "auto":
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// rendezvous across machines needs a shared file system")
    per_machine = num_gpus_per_machine
    worker_args = (
        main_func,
        world_size,
        per_machine,
        machine_rank,
        dist_url,
        args,
        timeout,
        backend,
    )
    if per_machine == 1:
        # One process on this machine: it joins the job itself instead of spawning a copy.
        return _distributed_worker(0, *worker_args)
    context = mp.start_processes(
        _distributed_worker,
        nprocs=per_machine,
        args=worker_args,
        daemon=False,
        start_method="spawn",
        join=False,
    )
    try:
        while not context.join():
            pass
    except KeyboardInterrupt:
        stop_interrupted(context.processes)
        raise
    except mp.ProcessExitedException as err:
        # The process said why (e.g. a config error on stderr) or was killed: exit with its
        # code instead of a launcher traceback. A raised exception keeps its traceback.
        if err.signal_name is None and err.exit_code:
            raise SystemExit(err.exit_code) from None
        raise SystemExit(f"fima.engine.launch: {err}") from None
    return None


def stop_interrupted(processes: list[Any], grace: float | None = None) -> None:
    """Stop the spawned ranks after this launcher got SIGINT (``processes``: objects with
    ``pid``, ``is_alive()`` and ``join(timeout)``, as ``multiprocessing.Process``).

    Ctrl-C in a terminal reaches every process of the job and the ranks stop by themselves;
    a SIGINT sent to the launcher alone (``kill -INT PID``) does not reach them, and the
    launcher would wait at exit for ranks that train on to the end. So the ranks still running
    after ``grace`` seconds get SIGINT (they stop as on Ctrl-C, after their last checkpoint),
    and those still running ``grace`` seconds later are killed.
    """
    grace = INTERRUPT_GRACE_SECONDS if grace is None else grace
    for stop in (None, signal.SIGINT, signal.SIGKILL):
        if stop is not None:
            for process in processes:
                if process.is_alive():
                    os.kill(process.pid, stop)
        deadline = time.monotonic() + grace
        for process in processes:
            process.join(max(deadline - time.monotonic(), 0.0))
        if not any(process.is_alive() for process in processes):
            return
    logger.warning(
        "fima.engine.launch: %d ranks did not stop", sum(p.is_alive() for p in processes)
    )


def check_launch_arguments(
    num_gpus_per_machine: int,
    num_machines: int,
    machine_rank: int,
    dist_url: str | None,
    timeout_seconds: float = DEFAULT_TIMEOUT.total_seconds(),
) -> None:
    """Raise ValueError, naming the flags, where the process layout cannot run: too few
    processes or machines, a rank out of range, a rendezvous URL that is not ``auto``,
    ``tcp://HOST:PORT`` or ``file:///PATH``, a ``tcp://`` port that machine 0 already listens on
    (checked there), or a timeout that is not a positive number of seconds."""
    if num_gpus_per_machine < 1 or num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine}, --num-machines {num_machines}, --machine-rank "
            f"{machine_rank}: need at least one process and machine, and a rank below "
            "--num-machines"
        )
    if num_machines > 1 and (dist_url is None or dist_url == "auto"):
        raise ValueError("--dist-url auto only works on one machine; pass tcp://HOST:PORT")
    if dist_url not in (None, "auto"):
        _check_dist_url(dist_url)
        if num_gpus_per_machine * num_machines > 1 and machine_rank == 0:
            _check_rendezvous_port_free(dist_url)
    if not (math.isfinite(timeout_seconds) and timeout_seconds > 0):
        raise ValueError(
            f"--dist-timeout {timeout_seconds:g}: must be a positive number of seconds"
        )


def _check_dist_url(dist_url: str) -> None:
    """``tcp://HOST:PORT`` or ``file:///PATH``, as ``init_process_group`` takes them."""
    url = urllib.parse.urlsplit(dist_url)
    try:
        port = url.port
    except ValueError:  # not a number, or out of range
        port = None
    if url.scheme == "tcp" and url.hostname and port and not url.path.strip("/"):
        return
    if url.scheme == "file" and url.path and not url.netloc:
        return
    raise ValueError(
        f"--dist-url {dist_url}: expected auto (one machine), tcp://HOST:PORT or file:///PATH"
    )


def _check_rendezvous_port_free(dist_url: str) -> None:
    """Machine 0's rank 0 listens at a ``tcp://`` URL's port on every address of the machine
    (torch's TCPStore): a port that something there already listens on (another run's
    rendezvous, say) stops every rank with a traceback after they were spawned. Say it first.

    Only a port in use is reported; any other reason the probe cannot bind (a port below 1024
    without the right, no IPv4) is left to ``init_process_group``. A port taken between this
    check and the rendezvous still fails there.
    """
    url = urllib.parse.urlsplit(dist_url)
    if url.scheme != "tcp":
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the store sets it: a port left in TIME_WAIT by a finished run is free to listen on.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", url.port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ValueError(
                    f"--dist-url {dist_url}: port {url.port} is in use on this machine (another "
                    "run's rendezvous?); choose a free port, or --dist-url auto on one machine"
                ) from None


def resolve_backend(backend: str) -> str:
    """``"auto"`` as the backend it stands for (NCCL when a GPU is visible, else gloo); an
    unknown name or NCCL without a GPU is a ValueError."""
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"--dist-backend {backend}: choose auto, nccl or gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("--dist-backend nccl needs GPUs and none is visible; use gloo")
    return backend


def _join_group(
    init_method: str,
    rank: int,
    world_size: int,
    local_rank: int,
    local_size: int,
    timeout: datetime.timedelta,
    backend: str,
) -> None:
    """Initialise the default group, the per-machine groups and the object group; pin the GPU
    (NCCL only: gloo processes run on the CPU)."""
    use_cuda = backend == "nccl"
    if use_cuda:
        if torch.cuda.device_count() <= local_rank:
            raise RuntimeError(
                f"{local_size} processes per machine but only {torch.cuda.device_count()} GPUs "
                "are visible (NCCL needs one GPU per process); to run them on the CPU, pass "
                "--dist-backend gloo MODEL.DEVICE cpu"
            )
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(
            backend=backend,
            init_method=init_method,
            world_size=world_size,
            rank=rank,
            timeout=timeout,
        )
    except Exception as err:
        raise RuntimeError(f"Process group initialisation failed at {init_method}: {err}") from err
    # new_group is collective: every rank creates every machine's group, in the same order.
    local = None
    for machine in range(world_size // local_size):
        ranks = list(range(machine * local_size, (machine + 1) * local_size))
        group = dist.new_group(ranks, timeout=timeout)
        if machine == rank // local_size:
            local = group
    cpu = None if backend == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
    comm.set_process_groups(local, cpu)
    threads = threads_per_process(local_size)
    if not use_cuda and threads is not None:
        # N processes on one CPU share its cores instead of each taking all of them.
        torch.set_num_threads(threads)
    comm.synchronize()


def _leave_group() -> None:
    dist.destroy_process_group()
    comm.set_process_groups(None, None)


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple[Any, ...],
    timeout: datetime.timedelta,
    backend: str,
) -> Any:
    rank = machine_rank * per_machine + local_rank
    _join_group(dist_url, rank, world_size, local_rank, per_machine, timeout, backend)
    try:
        return main_func(*args)
    finally:
        _leave_group()


def _run_under_torchrun(
    main_func: Callable[..., Any],
    args: tuple[Any, ...],
    timeout: datetime.timedelta,
    backend: str,
) -> Any:
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if world_size == 1:
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        return main_func(*args)
    _join_group("env://", rank, world_size, local_rank, local_size, timeout, backend)
    try:
        return main_func(*args)
    finally:
        _leave_group()
