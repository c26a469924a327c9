"""Contrastive losses, computed in float32 with log-sum-exp whatever the autocast state."""

from __future__ import annotations

import math

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
    """Share of rows whose positive (column 0) has the largest logit.

    Args:
        logits: ``[N, 1 + M]``, positive first (as :func:`info_nce` returns them).

    Returns:
        A 0-d float32 tensor in [0, 1].
    """
    return (logits.argmax(dim=1) == 0).float().mean()


def grid_cell_centres(box: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Centres of a feature grid's cells in source-frame coordinates (RECIPE.md §6 "Dense").

    ``cx = x1 + (x + 0.5)(x2 - x1) / W``, ``cy = y1 + (y + 0.5)(y2 - y1) / H``; a flipped box
    (``x1 > x2``) numbers its columns from the right, as the flipped crop shows them.

    Args:
        box: ``[B, 4]`` crop boxes ``(x1, y1, x2, y2)``, normalised to the source frame.
        grid: ``(H, W)`` of the feature grid.

    Returns:
        ``[B, H * W, 2]`` float32 ``(cx, cy)`` in row-major cell order (index ``y * W + x``).
    """
    height, width = grid
    box = box.float()
    steps_x = (torch.arange(width, device=box.device, dtype=torch.float32) + 0.5) / width
    steps_y = (torch.arange(height, device=box.device, dtype=torch.float32) + 0.5) / height
    cx = box[:, 0, None] + steps_x * (box[:, 2] - box[:, 0])[:, None]  # [B, W]
    cy = box[:, 1, None] + steps_y * (box[:, 3] - box[:, 1])[:, None]  # [B, H]
    return torch.stack(
        (cx[:, None, :].expand(-1, height, -1), cy[:, :, None].expand(-1, -1, width)), dim=-1
    ).flatten(1, 2)


def bin_diagonal(box: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The diagonal of one grid cell in source-frame coordinates (RECIPE.md §6 "Dense").

    Args:
        box: ``[B, 4]`` crop boxes ``(x1, y1, x2, y2)``, normalised to the source frame.
        grid: ``(H, W)`` of the feature grid.

    Returns:
        ``[B]`` float32, ``sqrt(((x2 - x1) / W)^2 + ((y2 - y1) / H)^2)``.
    """
    height, width = grid
    box = box.float()
    return torch.hypot((box[:, 2] - box[:, 0]) / width, (box[:, 3] - box[:, 1]) / height)


def dense_positive_pairs(
    box_q: torch.Tensor,
    box_k: torch.Tensor,
    mask_q: torch.Tensor,
    mask_k: torch.Tensor,
    grid: tuple[int, int],
    pos_ratio: float,
) -> torch.Tensor:
    """Which query cell / key cell pairs of the same sample are positives (RECIPE.md §6).

    ``(i, j)`` is positive iff ``|c_q(i) - c_k(j)| / max(d_q, d_k) < pos_ratio`` and both cells
    are foreground. A degenerate pair of boxes (both bin diagonals 0) has no positive: the ratio is
    then undefined or infinite, and the comparison is false.

    Args:
        box_q, box_k: ``[B, 4]`` boxes of the query's and the keys' crops.
        mask_q, mask_k: ``[B, H * W]`` bool foreground cells.
        grid: ``(H, W)``.
        pos_ratio: distance threshold in bin diagonals.

    Returns:
        ``[B, H * W, H * W]`` bool, ``[b, i, j]`` for query cell ``i`` and key cell ``j``.
    """
    offset = grid_cell_centres(box_q, grid)[:, :, None] - grid_cell_centres(box_k, grid)[:, None]
    distance = torch.hypot(offset[..., 0], offset[..., 1])  # [B, N, N]
    scale = torch.maximum(bin_diagonal(box_q, grid), bin_diagonal(box_k, grid))
    near = distance / scale[:, None, None] < pos_ratio
    return near & mask_q.bool()[:, :, None] & mask_k.bool()[:, None, :]


def dense_contrastive_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    k_other: torch.Tensor,
    box_q: torch.Tensor,
    box_k: torch.Tensor,
    mask_q: torch.Tensor,
    mask_k: torch.Tensor,
    *,
    pos_ratio: float,
    temperature: float,
    queue: torch.Tensor | None = None,
    grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """FIMA's dense (spatial motion) contrastive loss for one temporal slice and direction.

    RECIPE.md §6 "Dense": query cell ``i`` of sample ``b`` has as positives the keys ``k[b, j]``
    of the same sample whose cell lies within ``pos_ratio`` bin diagonals of it in the source
    frame, both cells being foreground (:func:`dense_positive_pairs`). Its denominator sums
    ``exp(q . key / temperature)`` over every key of the batch, ``k`` and ``k_other`` of all
    samples, plus ``queue``. The cell loss is ``-log(sum_pos / denominator)``; cells without a
    positive contribute 0; a sample's loss is the sum over its cells divided by its number of
    cells with a positive; samples without any are dropped; the result is the mean over the
    remaining samples, or 0 (still connected to ``q``'s graph) when none remain. Computed in
    float32 with log-sum-exp, finite for any input.

    Args:
        q: ``[B, N, D]`` L2-normalised predictions on the query's grid, ``N = H * W`` cells in
            row-major order (index ``y * W + x``).
        k: ``[B, N, D]`` L2-normalised keys of the same slice on the keys' grid.
        k_other: ``[B, M, D]`` further keys of each sample (the other slices), negatives only;
            ``M`` may be 0.
        box_q, box_k: ``[B, 4]`` crop boxes ``(x1, y1, x2, y2)`` of the query's and the keys'
            views, normalised to the source frame; ``x1 > x2`` for a flipped view.
        mask_q, mask_k: ``[B, N]`` bool foreground cells.
        pos_ratio: positive threshold in bin diagonals (0.7 in the recipe).
        temperature: softmax temperature.
        queue: ``[K, D]`` further negatives shared by all cells (the dense queue), or None.
        grid: ``(H, W)`` with ``H * W == N``; None for a square grid.

    Returns:
        The loss, a 0-d float32 tensor.
    """
    batch, cells, _ = q.shape
    if grid is None:
        side = math.isqrt(cells)
        if side * side != cells:
            raise ValueError(
                f"dense_contrastive_loss: {cells} cells are not a square grid; pass grid=(H, W)"
            )
        grid = (side, side)
    if grid[0] * grid[1] != cells or k.shape[:2] != (batch, cells) or k_other.shape[0] != batch:
        raise ValueError(
            f"dense_contrastive_loss: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, k_other "
            f"{tuple(k_other.shape)} do not match a batch of {batch} and a grid of {grid}"
        )
    with torch.autocast(q.device.type, enabled=False):
        q, k = q.float(), k.float()
        banks = [k.flatten(0, 1), k_other.float().flatten(0, 1)]
        if queue is not None and queue.numel():
            banks.append(queue.float())
        # The denominator of every cell: all keys of the batch (and the queue).
        log_denominator = torch.logsumexp(q.flatten(0, 1) @ torch.cat(banks).t() / temperature, 1)
        positive = dense_positive_pairs(box_q, box_k, mask_q, mask_k, grid, pos_ratio)
        has_positive = positive.any(dim=2)  # [B, N]
        logits = torch.bmm(q, k.transpose(1, 2)) / temperature  # [B, N, N], same sample only
        # Rows without a positive get zeros instead of all -inf, so that neither the value nor
        # the gradient of their (discarded) log-sum-exp is NaN.
        masked = torch.where(positive, logits, float("-inf"))
        masked = torch.where(has_positive[:, :, None], masked, 0.0)
        cell_loss = log_denominator.view(batch, cells) - torch.logsumexp(masked, dim=2)
        cell_loss = torch.where(has_positive, cell_loss, 0.0)
        positives_per_sample = has_positive.sum(dim=1)
        kept = positives_per_sample > 0
        per_sample = cell_loss.sum(dim=1) / positives_per_sample.clamp(min=1)
        # Dropped samples add 0 to the sum; the mean is over kept samples, and 0 (connected to
        # q, zero gradient) when none is kept. No branch on values: nothing waits for the device.
        return per_sample.sum() / kept.sum().clamp(min=1)
