"""``launch``: run a main function in 1..N processes on one or many machines, or under torchrun.

- One process: ``main_func(*args)`` is called directly, no process group.
- ``--num-gpus N`` on one machine: N processes are spawned (one per GPU, or N gloo processes on a
  CPU-only machine) that rendezvous at ``--dist-url`` (``auto``: a free local port).
- Many machines: every machine runs the same command with its ``--machine-rank`` and a shared
  ``--dist-url tcp://HOST:PORT``.
- Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment) no flag is
  needed: each process joins the group torchrun describes.

NCCL is used on GPUs, gloo on the CPU. Collectives time out after ``timeout``: if a rank dies,
the others fail with an error instead of hanging, and the launcher stops the rest.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fima.utils import comm

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


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
) -> Any:
    """Run ``main_func(*args)`` in every process of the job; see the module docstring.

    Args:
        main_func: the function to run (must be importable: it is pickled for spawning).
        num_gpus_per_machine: processes per machine.
        num_machines: machines in the job.
        machine_rank: this machine's rank (0 .. num_machines - 1).
        dist_url: rendezvous URL; ``"auto"`` picks a free local port (one machine only).
        args: arguments of ``main_func``.
        timeout: limit of any collective operation.

    Returns:
        ``main_func``'s return value in a single process, else None.
    """
    if launched_by_torchrun():
        return _run_under_torchrun(main_func, args, timeout)
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine; pass tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// rendezvous across machines needs a shared file system")
    mp.start_processes(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )
    return None


def _init_group(
    backend: str, init_method: str, world_size: int, rank: int, timeout: datetime.timedelta
) -> None:
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


def _set_local_group(num_machines: int, per_machine: int, machine_rank: int) -> None:
    for machine in range(num_machines):
        ranks = list(range(machine * per_machine, (machine + 1) * per_machine))
        group = dist.new_group(ranks)
        if machine == machine_rank:
            comm.set_local_process_group(group)


def _limit_cpu_threads(local_size: int) -> None:
    # N processes on one CPU share its cores instead of each taking all of them.
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple[Any, ...],
    timeout: datetime.timedelta,
) -> None:
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        if torch.cuda.device_count() < per_machine:
            raise RuntimeError(
                f"--num-gpus {per_machine} but only {torch.cuda.device_count()} GPUs are visible"
            )
        torch.cuda.set_device(local_rank)
    rank = machine_rank * per_machine + local_rank
    _init_group("nccl" if use_cuda else "gloo", dist_url, world_size, rank, timeout)
    _set_local_group(world_size // per_machine, per_machine, machine_rank)
    _limit_cpu_threads(per_machine)
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def _run_under_torchrun(
    main_func: Callable[..., Any], args: tuple[Any, ...], timeout: datetime.timedelta
) -> Any:
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if world_size == 1:
        return main_func(*args)
    _init_group("nccl" if use_cuda else "gloo", "env://", world_size, rank, timeout)
    _set_local_group(world_size // local_size, local_size, rank // local_size)
    _limit_cpu_threads(local_size)
    comm.synchronize()
    try:
        return main_func(*args)
    finally:
        dist.destroy_process_group()
