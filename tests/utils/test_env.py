"""Every RNG state round-trips through a weights_only checkpoint; evaluation can leave them be;
processes sharing a CPU split its threads."""

from __future__ import annotations

import io
import os
import platform
import random

import numpy as np
import torch

from fima.utils.env import (
    cache_root,
    describe_cpu_model,
    describe_cpus,
    get_rng_state,
    preserved_rng,
    processes_per_cpus,
    set_rng_state,
    threads_per_process,
    user_threads,
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
    # An empty or invalid value, which OpenMP ignores (every CPU), is not the user's choice:
    # with `OMP_NUM_THREADS= python ...` two runs at a time each took every CPU.
    for ignored in ("", "0", "many", "2,", "2,0", "2,x"):
        monkeypatch.setenv("OMP_NUM_THREADS", ignored)
        assert threads_per_process(2) == 3, ignored
    # OpenMP's list for nested levels: the first is the outer level's, which torch uses.
    for nested in ("2,1", " 2 , 4 "):
        monkeypatch.setenv("OMP_NUM_THREADS", nested)
        assert threads_per_process(2) is None and user_threads() == 2, nested


def test_processes_per_cpus_fills_the_cpus_with_the_users_thread_count(monkeypatch) -> None:
    _six_cpus(monkeypatch)
    assert processes_per_cpus() == 6
    for threads, processes in (("2", 3), ("4", 1), ("12", 1), ("0", 6), ("many", 6), ("2,4", 3)):
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


def test_describe_cpu_model_names_the_model_and_its_bf16_extensions(tmp_path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    # Two processors; the first one's fields are read. AVX512-BF16 without AVX-512 foundation
    # flags cannot occur, but shows that each extension is read from its own flag.
    first = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
        "model name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx avx2 fma avx512_bf16\n"
    )
    cpuinfo.write_text(first + "\n" + first.replace("AMD EPYC 9R14", "Another CPU"))
    assert describe_cpu_model(str(cpuinfo)) == (
        "AMD EPYC 9R14 (family 25, model 17; AVX2, AVX512-BF16)"
    )
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Intel Xeon\n"
        "flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    )
    assert describe_cpu_model(str(cpuinfo)) == "Intel Xeon (AVX2, AVX-512, AVX512-BF16, AMX)"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Old CPU\nflags\t\t: sse2\n")
    assert describe_cpu_model(str(cpuinfo)) == "Old CPU"
    # Without /proc/cpuinfo (another OS): the platform's own name for the processor.
    assert describe_cpu_model(str(tmp_path / "missing")) == (
        platform.processor() or platform.machine() or "unknown CPU"
    )


def test_an_empty_fima_cache_is_the_default_cache(monkeypatch) -> None:
    monkeypatch.setenv("FIMA_CACHE", "")
    assert cache_root() == os.path.expanduser(os.path.join("~", ".cache", "fima"))
    monkeypatch.setenv("FIMA_CACHE", "/data/cache")
    assert cache_root() == "/data/cache"
