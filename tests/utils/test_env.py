"""Every RNG state round-trips through a weights_only checkpoint; evaluation can leave them be;
processes sharing a CPU split its threads."""

from __future__ import annotations

import io
import os
import random

import numpy as np
import torch

from fima.utils.env import (
    describe_cpus,
    get_rng_state,
    preserved_rng,
    processes_per_cpus,
    set_rng_state,
    threads_per_process,
)


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


def _six_cpus(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    else:
        monkeypatch.setattr(os, "cpu_count", lambda: 6)


def test_threads_per_process_splits_the_cpus_and_yields_to_omp_num_threads(monkeypatch) -> None:
    _six_cpus(monkeypatch)
    assert [threads_per_process(n) for n in (1, 2, 4, 6, 8)] == [6, 3, 1, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads_per_process(4) is None


def test_processes_per_cpus_fills_the_cpus_with_the_users_thread_count(monkeypatch) -> None:
    _six_cpus(monkeypatch)
    assert processes_per_cpus() == 6
    for threads, processes in (("2", 3), ("4", 1), ("12", 1), ("0", 6), ("many", 6)):
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
        assert processes_per_cpus() == processes, threads


def test_describe_cpus_names_an_affinity_mask_smaller_than_the_machine(monkeypatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    if not hasattr(os, "sched_getaffinity"):
        assert describe_cpus() == "64 CPUs"
        return
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
    assert describe_cpus() == "4 of 64 CPUs"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert describe_cpus() == "64 CPUs"
