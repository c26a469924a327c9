"""The dense motion loss against a naive restatement of RECIPE.md §6 "Dense", and InfoNCE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fima.modeling.losses import dense_contrastive_loss, info_nce


def naive_dense_loss(q, k, k_other, box_q, box_k, mask_q, mask_k, pos_ratio, temperature, grid,
                     queue=None):  # fmt: skip
    """RECIPE.md §6 "Dense" written out cell by cell in float64, exp then log."""
    height, width = grid
    q, k, k_other = q.detach().double(), k.double(), k_other.double()
    batch, cells = q.shape[:2]
    every_key = [k[b, j] for b in range(batch) for j in range(cells)]
    every_key += [k_other[b, j] for b in range(batch) for j in range(k_other.shape[1])]
    if queue is not None:
        every_key += list(queue.double())

    def centre(box, cell):
        x1, y1, x2, y2 = (float(v) for v in box)
        y, x = divmod(cell, width)
        return x1 + (x + 0.5) * (x2 - x1) / width, y1 + (y + 0.5) * (y2 - y1) / height

    def diagonal(box):
        x1, y1, x2, y2 = (float(v) for v in box)
        return math.sqrt(((x2 - x1) / width) ** 2 + ((y2 - y1) / height) ** 2)

    sample_losses = []
    for b in range(batch):
        scale = max(diagonal(box_q[b]), diagonal(box_k[b]))
        total, with_positive = 0.0, 0
        for i in range(cells):
            cq = centre(box_q[b], i)
            positives = []
            for j in range(cells):
                ck = centre(box_k[b], j)
                distance = math.hypot(cq[0] - ck[0], cq[1] - ck[1])
                near = scale > 0 and distance / scale < pos_ratio
                if near and bool(mask_q[b, i]) and bool(mask_k[b, j]):
                    positives.append(j)
            if not positives:
                continue
            numerator = sum(math.exp(float(q[b, i] @ k[b, j]) / temperature) for j in positives)
            denominator = sum(math.exp(float(q[b, i] @ key) / temperature) for key in every_key)
            total += -math.log(numerator / denominator)
            with_positive += 1
        if with_positive:
            sample_losses.append(total / with_positive)
    return sum(sample_losses) / len(sample_losses) if sample_losses else 0.0


def random_boxes(batch: int, gen: torch.Generator, flip: torch.Tensor) -> torch.Tensor:
    """Overlapping crop boxes around the frame centre, with x1 and x2 swapped where ``flip``."""
    low = 0.05 + 0.3 * torch.rand(batch, 2, generator=gen)
    high = 0.6 + 0.35 * torch.rand(batch, 2, generator=gen)
    box = torch.stack([low[:, 0], low[:, 1], high[:, 0], high[:, 1]], dim=1)
    box[flip] = box[flip][:, [2, 1, 0, 3]]
    return box


def random_inputs(seed: int, batch: int, grid: tuple[int, int], others: int, queue: int,
                  dim: int = 8):  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    cells = grid[0] * grid[1]

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=gen), dim=-1)

    return {
        "q": unit(batch, cells, dim),
        "k": unit(batch, cells, dim),
        "k_other": unit(batch, others * cells, dim),
        "box_q": random_boxes(batch, gen, torch.rand(batch, generator=gen) < 0.5),
        "box_k": random_boxes(batch, gen, torch.rand(batch, generator=gen) < 0.5),
        "mask_q": torch.rand(batch, cells, generator=gen) < 0.6,
        "mask_k": torch.rand(batch, cells, generator=gen) < 0.6,
        "queue": unit(queue, dim) if queue else None,
    }


def check(inputs: dict, grid: tuple[int, int], pos_ratio: float = 0.7, temperature: float = 0.1,
          pass_grid: bool = True) -> torch.Tensor:  # fmt: skip
    q = inputs["q"].clone().requires_grad_(True)
    args = (q, inputs["k"], inputs["k_other"], inputs["box_q"], inputs["box_k"],
            inputs["mask_q"], inputs["mask_k"])  # fmt: skip
    loss = dense_contrastive_loss(
        *args,
        pos_ratio=pos_ratio,
        temperature=temperature,
        queue=inputs["queue"],
        grid=grid if pass_grid else None,
    )
    expected = naive_dense_loss(*args[:7], pos_ratio, temperature, grid, inputs["queue"])
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss.double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    return loss


@pytest.mark.parametrize(
    ("seed", "batch", "grid", "others", "queue"),
    [
        (0, 3, (4, 4), 1, 0),  # the recipe's case: one other slice, no queue
        (1, 3, (4, 4), 1, 20),  # with a dense queue
        (2, 2, (3, 5), 3, 7),  # a non-square grid, three other slices
        (3, 4, (2, 2), 0, 5),  # no other slice
        (4, 2, (7, 7), 1, 0),
    ],
)
def test_dense_loss_matches_recipe(seed, batch, grid, others, queue) -> None:
    loss = check(random_inputs(seed, batch, grid, others, queue), grid)
    assert loss.item() > 0


def test_dense_loss_square_grid_is_the_default() -> None:
    check(random_inputs(5, 2, (3, 3), 1, 0), (3, 3), pass_grid=False)
    with pytest.raises(ValueError, match="not a square grid"):
        inputs = random_inputs(5, 2, (2, 3), 1, 0)
        dense_contrastive_loss(*list(inputs.values())[:7], pos_ratio=0.7, temperature=0.1)


@pytest.mark.parametrize("flip", ["query", "key", "both"])
def test_dense_loss_with_flipped_boxes(flip: str) -> None:
    inputs = random_inputs(6, 3, (4, 4), 1, 4)
    unflipped = inputs["box_q"].clone()
    inputs["box_q"] = unflipped[:, [2, 1, 0, 3]] if flip in ("query", "both") else unflipped
    inputs["box_k"] = unflipped[:, [2, 1, 0, 3]] if flip in ("key", "both") else unflipped
    check(inputs, (4, 4))


def test_flipped_views_of_the_same_crop_pair_mirrored_cells() -> None:
    """A flipped view's column x is the unflipped view's column W-1-x: only those are positive."""
    grid = (1, 4)
    q = torch.eye(4)[None]
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    masks = torch.ones(1, 4, dtype=torch.bool)
    loss_mirrored = dense_contrastive_loss(
        q, q.flip(1), torch.zeros(1, 0, 4), box, box[:, [2, 1, 0, 3]], masks, masks,
        pos_ratio=0.1, temperature=0.1, grid=grid,
    )  # fmt: skip
    loss_same = dense_contrastive_loss(
        q, q, torch.zeros(1, 0, 4), box, box[:, [2, 1, 0, 3]], masks, masks,
        pos_ratio=0.1, temperature=0.1, grid=grid,
    )  # fmt: skip
    assert loss_mirrored < loss_same


@pytest.mark.parametrize("which", ["query", "key", "both"])
def test_all_zero_masks_give_zero_with_graph(which: str) -> None:
    inputs = random_inputs(7, 3, (4, 4), 1, 6)
    if which in ("query", "both"):
        inputs["mask_q"] = torch.zeros_like(inputs["mask_q"])
    if which in ("key", "both"):
        inputs["mask_k"] = torch.zeros_like(inputs["mask_k"])
    loss = check(inputs, (4, 4))
    assert loss.item() == 0.0 and loss.requires_grad


def test_degenerate_boxes_are_finite() -> None:
    inputs = random_inputs(8, 3, (3, 3), 1, 0)
    point = torch.tensor([0.4, 0.4, 0.4, 0.4])
    # Both boxes a point: no positive at all (the distance ratio is undefined).
    inputs["box_q"] = point.repeat(3, 1)
    inputs["box_k"] = point.repeat(3, 1)
    assert check(inputs, (3, 3)).item() == 0.0
    # A zero-width query box against a real key box: the key box's diagonal sets the scale.
    inputs["box_q"] = torch.tensor([0.5, 0.1, 0.5, 0.9]).repeat(3, 1)
    inputs["box_k"] = torch.tensor([0.2, 0.1, 0.8, 0.9]).repeat(3, 1)
    inputs["mask_q"] = torch.ones_like(inputs["mask_q"])
    inputs["mask_k"] = torch.ones_like(inputs["mask_k"])
    assert check(inputs, (3, 3), pos_ratio=0.9).item() > 0


def test_samples_without_positives_are_dropped_from_the_mean() -> None:
    inputs = random_inputs(9, 3, (4, 4), 1, 0)
    inputs["mask_q"][1] = False  # sample 1 has no positive
    full = check(inputs, (4, 4))
    assert torch.isfinite(full)


def test_dense_loss_in_bf16_autocast_stays_fp32() -> None:
    inputs = random_inputs(10, 2, (4, 4), 1, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dense_contrastive_loss(
            *list(inputs.values())[:7], pos_ratio=0.7, temperature=0.1, queue=inputs["queue"]
        )
    expected = naive_dense_loss(*list(inputs.values())[:7], 0.7, 0.1, (4, 4), inputs["queue"])
    assert loss.dtype == torch.float32
    assert abs(loss.item() - expected) <= 1e-5 * abs(expected)


def test_info_nce_with_in_batch_negatives_and_queue_matches_naive() -> None:
    gen = torch.Generator().manual_seed(11)
    query, positive = (F.normalize(torch.randn(5, 8, generator=gen), dim=1) for _ in range(2))
    negatives = F.normalize(torch.randn(15, 8, generator=gen), dim=1)
    queue = F.normalize(torch.randn(9, 8, generator=gen), dim=1)
    loss, logits = info_nce(query, positive, temperature=0.1, queue=queue, negatives=negatives)
    expected = 0.0
    for i in range(5):
        pos = math.exp(float(query[i] @ positive[i]) / 0.1)
        rest = sum(math.exp(float(query[i] @ n) / 0.1) for n in torch.cat([negatives, queue]))
        expected += -math.log(pos / (pos + rest)) / 5
    assert logits.shape == (5, 1 + 15 + 9)
    assert abs(loss.item() - expected) <= 1e-5 * expected
