"""Every RNG state round-trips through a weights_only checkpoint; evaluation can leave them be."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from fima.utils.env import get_rng_state, preserved_rng, set_rng_state


def _draw() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_state_round_trips_through_a_weights_only_checkpoint() -> None:
    np.random.randn()  # leave a cached Gaussian in NumPy's state
    buffer = io.BytesIO()
    torch.save(get_rng_state(), buffer)
    first = _draw()
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    assert _draw() == first


def test_preserved_rng_restores_every_generator() -> None:
    state = get_rng_state()
    expected = _draw()
    set_rng_state(state)
    with preserved_rng():
        _draw()
        _draw()
    assert _draw() == expected
