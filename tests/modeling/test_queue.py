"""KeyQueue: any size wraps correctly and always holds exactly the last K keys."""

from __future__ import annotations

import pytest
import torch

from fima.modeling.queue import KeyQueue


@pytest.mark.parametrize(("size", "batch"), [(10, 3), (12, 4), (5, 7), (7, 7), (2240, 48)])
def test_queue_holds_exactly_the_last_k_keys(size: int, batch: int) -> None:
    queue = KeyQueue(size, 4)
    history = []
    for step in range(9):
        keys = torch.randn(batch, 4) + step
        history.append(keys)
        queue.enqueue(keys)
        everything = torch.cat(history)
        expected = everything[-size:]
        held = queue().clone()
        if len(everything) >= size:
            assert sorted(map(tuple, held.tolist())) == sorted(map(tuple, expected.tolist()))
        else:
            got = {tuple(r) for r in held.tolist()}
            assert all(tuple(r) in got for r in everything.tolist())
        assert int(queue.ptr) == len(everything) % size


def test_peek_does_not_change_the_queue() -> None:
    queue = KeyQueue(6, 2)
    before = queue().clone()
    peeked = queue.peek_enqueued(torch.ones(2, 2))
    assert torch.equal(queue(), before) and int(queue.ptr) == 0
    queue.enqueue(torch.ones(2, 2))
    assert torch.equal(queue(), peeked)


def test_queue_state_is_in_the_state_dict() -> None:
    queue = KeyQueue(8, 3)
    queue.enqueue(torch.randn(5, 3))
    other = KeyQueue(8, 3)
    other.load_state_dict(queue.state_dict())
    assert torch.equal(other(), queue()) and int(other.ptr) == 5
