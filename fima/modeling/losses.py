"""Contrastive losses, computed in float32 with log-sum-exp whatever the autocast state."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    query: torch.Tensor,
    positive: torch.Tensor,
    *,
    temperature: float,
    queue: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE with one positive per query, shared in-batch negatives and a queue.

    Args:
        query: ``[N, D]`` L2-normalised.
        positive: ``[N, D]``; ``positive[i]`` is the positive of ``query[i]``.
        temperature: softmax temperature.
        queue: ``[K, D]`` negatives shared by all queries (the memory queue), or None.
        negatives: ``[M, D]`` further negatives shared by all queries (in-batch keys), or None.

    Returns:
        The mean loss (0-d) and the logits ``[N, 1 + M + K]`` (positive first) for accuracies.
    """
    with torch.autocast(query.device.type, enabled=False):
        query = query.float()
        logits = [(query * positive.float()).sum(dim=1, keepdim=True)]
        for bank in (negatives, queue):
            if bank is not None and bank.numel():
                logits.append(query @ bank.float().t())
        logits = torch.cat(logits, dim=1) / temperature
        labels = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
        return F.cross_entropy(logits, labels), logits


def top1_accuracy(logits: torch.Tensor) -> torch.Tensor:
    """Share of rows whose positive (column 0) has the largest logit, as a 0-d tensor."""
    return (logits.argmax(dim=1) == 0).float().mean()
