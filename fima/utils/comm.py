"""Distributed helpers that answer sensibly without a process group (world 1, rank 0).

Every function here may be called from any code path: on a laptop without ``torch.distributed``
initialised they degrade to the single-process answer, so model and engine code never branch on
whether it runs distributed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

_LOCAL_PROCESS_GROUP: dist.ProcessGroup | None = None
_CPU_PROCESS_GROUP: dist.ProcessGroup | None = None


def is_distributed() -> bool:
    """Whether a default process group exists (and so collectives are real).

    Returns:
        True under an initialised ``torch.distributed``.
    """
    return dist.is_available() and dist.is_initialized()


def backend() -> str:
    """The default process group's backend; needs a process group.

    Returns:
        ``"nccl"``, ``"gloo"``, ...
    """
    return str(dist.get_backend())


def uses_gpu() -> bool:
    """Whether this process computes on a GPU under ``MODEL.DEVICE auto``.

    Returns:
        True when a GPU is visible and the processes are not joined by gloo
        (``--dist-backend gloo`` runs them on the CPU).
    """
    if not torch.cuda.is_available():
        return False
    return not (is_distributed() and get_world_size() > 1 and backend() == "gloo")


def get_world_size() -> int:
    """Number of processes of the job.

    Returns:
        The default group's size; 1 without a process group.
    """
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    """Rank of this process in the job.

    Returns:
        The rank in the default group; 0 without a process group.
    """
    return dist.get_rank() if is_distributed() else 0


def get_local_rank() -> int:
    """Rank of this process within its machine.

    Returns:
        The rank in the machine's group; 0 without a process group.
    """
    if not is_distributed() or _LOCAL_PROCESS_GROUP is None:
        return 0
    return dist.get_rank(group=_LOCAL_PROCESS_GROUP)


def get_local_size() -> int:
    """Number of processes on this machine.

    Returns:
        The machine group's size; 1 without a process group.
    """
    if not is_distributed() or _LOCAL_PROCESS_GROUP is None:
        return 1
    return dist.get_world_size(group=_LOCAL_PROCESS_GROUP)


def set_process_groups(
    local: dist.ProcessGroup | None, cpu: dist.ProcessGroup | None = None
) -> None:
    """Record the process groups that ``fima.engine.launch`` creates with the job's timeout.

    Args:
        local: the group of the processes on this machine.
        cpu: when the default backend is not gloo, a gloo group for collectives on Python
            objects. ``(None, None)`` forgets both (after the default group is destroyed).
    """
    global _LOCAL_PROCESS_GROUP, _CPU_PROCESS_GROUP
    _LOCAL_PROCESS_GROUP, _CPU_PROCESS_GROUP = local, cpu


def is_main_process() -> bool:
    """Whether this is rank 0, the only process that writes files.

    Returns:
        True on rank 0 (and without a process group).
    """
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes; a no-op in one process."""
    if get_world_size() > 1:
        dist.barrier()


def _cpu_group() -> dist.ProcessGroup:
    """A gloo group for collectives on Python objects, whatever the default backend.

    ``launch`` creates it up front; a process group set up by other code gets one on the first
    object collective (which every rank reaches together, as ``new_group`` requires).
    """
    global _CPU_PROCESS_GROUP
    if backend() == "gloo":
        return dist.group.WORLD
    if _CPU_PROCESS_GROUP is None:
        _CPU_PROCESS_GROUP = dist.new_group(backend="gloo")
    return _CPU_PROCESS_GROUP


def collective_device() -> torch.device:
    """The device that the default backend reduces on.

    Returns:
        The current GPU for NCCL, else the CPU.
    """
    if is_distributed() and backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_object(data: Any) -> list[Any]:
    """Gather a picklable object from every rank (a collective).

    Args:
        data: this rank's object.

    Returns:
        Every rank's object, in rank order; ``[data]`` in one process.
    """
    if get_world_size() == 1:
        return [data]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, data, group=_cpu_group())
    return out


def broadcast_object(data: Any, src: int = 0) -> Any:
    """Share rank ``src``'s object with every rank (a collective).

    Args:
        data: the object on rank ``src``; ignored elsewhere.
        src: the rank whose object is shared.

    Returns:
        Rank ``src``'s object; ``data`` in one process.
    """
    if get_world_size() == 1:
        return data
    box = [data]
    dist.broadcast_object_list(box, src=src, group=_cpu_group())
    return box[0]


@torch.no_grad()
def all_gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors from every rank along dim 0 (rank order), no gradient.

    Args:
        tensor: ``[N, ...]`` on this rank; every rank must pass the same shape.

    Returns:
        ``[world_size * N, ...]``; the input itself in one process.
    """
    world = get_world_size()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def broadcast_tensor(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast of rank ``src``'s tensor; a no-op in one process.

    Args:
        tensor: the same shape and dtype on every rank, on :func:`collective_device`.
        src: the rank whose values are shared.

    Returns:
        ``tensor`` itself, holding rank ``src``'s values.
    """
    if get_world_size() > 1:
        dist.broadcast(tensor, src=src)
    return tensor


@torch.no_grad()
def all_to_all_tensor(
    tensor: torch.Tensor, send_counts: list[int], recv_counts: list[int]
) -> torch.Tensor:
    """Exchange rows between ranks, no gradient.

    Args:
        tensor: ``[sum(send_counts), ...]``: the first ``send_counts[0]`` rows go to rank 0, the
            next ``send_counts[1]`` to rank 1, and so on.
        send_counts: rows for each rank.
        recv_counts: rows that arrive from each rank (what they send to this one).

    Returns:
        ``[sum(recv_counts), ...]``, grouped by source rank in rank order; the input itself in
        one process.
    """
    if get_world_size() == 1:
        return tensor
    out = tensor.new_empty((sum(recv_counts), *tensor.shape[1:]))
    dist.all_to_all_single(out, tensor.contiguous(), recv_counts, send_counts)
    return out


def all_reduce_tensor(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce; a no-op in one process.

    Args:
        tensor: the same shape and dtype on every rank, on :func:`collective_device`.
        op: ``"sum"``, ``"max"`` or ``"min"``.

    Returns:
        ``tensor`` itself, holding the reduction.
    """
    if get_world_size() > 1:
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(tensor, op=ops[op])
    return tensor


def sum_over_ranks(counts: list[int]) -> list[int]:
    """Sum integer counts over all ranks on the CPU (a collective; no GPU synchronisation, so a
    training step may call it); ``counts`` itself in one process."""
    if get_world_size() == 1:
        return list(counts)
    tensor = torch.tensor(counts, dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=_cpu_group())
    return tensor.tolist()


def reduce_dict_mean(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of floats over ranks (a collective); every rank gets the result.

    Args:
        values: the same keys on every rank.

    Returns:
        A new dict of the means.
    """
    if get_world_size() == 1 or not values:
        return dict(values)
    keys = sorted(values)
    stacked = torch.tensor(
        [float(values[k]) for k in keys], dtype=torch.float64, device=collective_device()
    )
    all_reduce_tensor(stacked)
    stacked /= get_world_size()
    return {k: float(v) for k, v in zip(keys, stacked.cpu().tolist())}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a data-parallel wrapper.

    Args:
        model: a model, wrapped in ``DistributedDataParallel`` / ``DataParallel`` or not.

    Returns:
        The wrapped module, or ``model`` itself.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        return model.module
    return model
