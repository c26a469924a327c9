"""comm answers for world 1 without a process group, and exchanges data across 2 gloo ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist

from fima.engine import launch
from fima.utils import comm


def test_without_a_process_group_everything_is_the_single_process_answer() -> None:
    assert not dist.is_initialized()
    assert (comm.get_world_size(), comm.get_rank()) == (1, 0)
    assert (comm.get_local_size(), comm.get_local_rank()) == (1, 0)
    assert comm.is_main_process()
    comm.synchronize()
    x = torch.arange(6.0).view(3, 2)
    assert comm.all_gather_tensor(x) is x
    assert comm.all_to_all_tensor(x, [3], [3]) is x
    assert comm.broadcast_tensor(x) is x
    assert comm.all_reduce_tensor(x.clone(), op="max").equal(x)
    assert comm.all_gather_object({"a": 1}) == [{"a": 1}]
    assert comm.broadcast_object("x") == "x"
    assert comm.reduce_dict_mean({"loss": 2.0}) == {"loss": 2.0}
    assert comm.collective_device() == torch.device("cpu")


def _exchange() -> None:
    rank = comm.get_rank()
    assert (comm.get_world_size(), comm.get_local_size(), comm.get_local_rank()) == (2, 2, rank)
    assert comm.all_gather_object(rank * 10) == [0, 10]
    assert comm.broadcast_object(f"from {rank}") == "from 0"
    assert comm.reduce_dict_mean({"loss": float(rank)}) == {"loss": 0.5}
    mine = torch.full((3, 2), float(rank))
    assert comm.all_gather_tensor(mine)[:, 0].tolist() == [0, 0, 0, 1, 1, 1]
    # Rank 0 sends 1 row to itself and 2 to rank 1; rank 1 sends 2 to rank 0 and 1 to itself.
    rows = torch.arange(3.0)[:, None] + 10 * rank
    send = [1, 2] if rank == 0 else [2, 1]
    recv = [1, 2] if rank == 0 else [2, 1]
    got = comm.all_to_all_tensor(rows, send, recv)[:, 0].tolist()
    assert got == ([0.0, 10.0, 11.0] if rank == 0 else [1.0, 2.0, 12.0])
    flag = comm.broadcast_tensor(torch.tensor([rank + 5]))
    assert flag.item() == 5


def test_collectives_across_two_processes() -> None:
    launch(_exchange, 2)
    assert not dist.is_initialized()
