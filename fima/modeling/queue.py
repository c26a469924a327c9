"""Key queues for contrastive negatives: any size, all-gathered on enqueue, state in buffers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fima.utils import comm


class KeyQueue(nn.Module):
    """A ring buffer of the last ``size`` L2-normalised keys, identical on every rank.

    It starts with random unit vectors (as MoCo does). :meth:`enqueue` all-gathers the keys of
    every rank (in rank order) before writing, so every rank holds the same queue; any number of
    keys is accepted and wraps around the end; when more than ``size`` keys arrive, the last
    ``size`` are kept. The keys and the write pointer are buffers, so they are checkpointed with
    the model.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue size must be positive, got {size}")
        self.size = size
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        # Keys (of all ranks) written by the last enqueue: how fast the queue turns over.
        self.last_enqueued = 0

    def forward(self) -> torch.Tensor:
        """The queued keys.

        Returns:
            ``[size, dim]``, the buffer itself: enqueue only after backward.
        """
        return self.keys

    def _slots(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather ``keys`` from every rank; return the ring positions they go to and the keys."""
        keys = comm.all_gather_tensor(keys.detach().to(self.keys.dtype))
        positions = (self.ptr + torch.arange(keys.shape[0], device=self.keys.device)) % self.size
        # More keys than slots: only the last ``size`` survive (and positions stay unique).
        return positions[-self.size :], keys[-self.size :]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Append the keys of every rank (a collective: every rank calls it).

        Args:
            keys: ``[N, dim]`` L2-normalised, ``N`` equal on all ranks.
        """
        n_total = keys.shape[0] * comm.get_world_size()
        positions, keys = self._slots(keys)
        self.keys[positions] = keys
        self.ptr.copy_((self.ptr + n_total) % self.size)
        self.last_enqueued = n_total

    @torch.no_grad()
    def peek_enqueued(self, keys: torch.Tensor) -> torch.Tensor:
        """What :meth:`forward` would return after ``enqueue(keys)``, leaving the queue as is
        (a collective, like :meth:`enqueue`).

        Args:
            keys: ``[N, dim]``, ``N`` equal on all ranks.

        Returns:
            ``[size, dim]``, a new tensor.
        """
        positions, keys = self._slots(keys)
        result = self.keys.clone()
        result[positions] = keys
        return result

    def extra_repr(self) -> str:
        """``size=..., dim=...`` for the module's printout."""
        return f"size={self.size}, dim={self.keys.shape[1]}"
