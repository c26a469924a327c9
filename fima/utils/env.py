"""Seeding and the capture/restore of every random number generator, for exact resume; a
process's share of the CPUs, and the CPU described for a benchmark's report."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def cache_root() -> str:
    """fima's cache folder (generated datasets, downloads): ``$FIMA_CACHE``, default
    ``~/.cache/fima`` (also where it is set but empty, ``FIMA_CACHE=``, which would otherwise
    put the cache in whatever folder a run starts from)."""
    return os.path.expanduser(os.environ.get("FIMA_CACHE") or os.path.join("~", ".cache", "fima"))


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (taskset,
    container CPU sets), else every CPU of the machine."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cpus or 1


def describe_cpus() -> str:
    """The CPUs this process may use, for a benchmark's report: ``"2 CPUs"``, or
    ``"4 of 64 CPUs"`` when an affinity mask leaves it fewer than the machine has."""
    usable, machine = available_cpus(), os.cpu_count() or 1
    return f"{usable} CPUs" if usable >= machine else f"{usable} of {machine} CPUs"


# The /proc/cpuinfo flags that decide how fast a CPU trains, with the names the reports use:
# bfloat16 is native only with AVX512-BF16 or AMX; elsewhere oneDNN emulates it, several times
# slower than float32 (fima.engine.train_loop.native_autocast).
_CPU_EXTENSIONS = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_bf16", "AVX512-BF16"),
    ("amx_bf16", "AMX"),
)


def describe_cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """This machine's CPU, for a benchmark's report: its model name, family and model numbers
    and the vector extensions behind its float32 and bfloat16 speed, e.g. ``"AMD EPYC (family
    25, model 17; AVX2, AVX-512, AVX512-BF16)"``. Hosts expose different extensions of the same
    model, so the figures of two reports compare only where these agree. Without ``cpuinfo``
    (not Linux), the platform's processor string."""
    try:
        with open(cpuinfo) as f:
            first_cpu = f.read().split("\n\n", 1)[0]
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU"
    fields = {}
    for line in first_cpu.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.machine() or "unknown CPU"
    details = [
        f"{label} {fields[key]}"
        for key, label in (("cpu family", "family"), ("model", "model"))
        if key in fields
    ]
    flags = set(fields.get("flags", "").split())
    extensions = [label for flag, label in _CPU_EXTENSIONS if flag in flags]
    inside = "; ".join(part for part in (", ".join(details), ", ".join(extensions)) if part)
    return f"{name} ({inside})" if inside else name


def user_threads() -> int | None:
    """The threads ``OMP_NUM_THREADS`` asks for, as OpenMP (and so PyTorch) reads it: a positive
    integer, or a list of them for nested levels (``4,2``), whose first is the threads of the
    outer level, which PyTorch's operators use. None when it is unset or invalid (empty,
    ``abc``, ``0``, ``4,``), which OpenMP ignores, using every CPU."""
    levels = os.environ.get("OMP_NUM_THREADS", "").split(",")
    if not all(re.fullmatch(r"\s*\+?\d+\s*", level) and int(level) > 0 for level in levels):
        return None
    return int(levels[0])


def threads_per_process(processes: int) -> int | None:
    """Threads for each of ``processes`` processes that share this process's CPUs
    (:func:`available_cpus`), at least 1; ``None`` when ``OMP_NUM_THREADS`` is set
    (:func:`user_threads`), which wins (torchrun sets it to 1 for several processes)."""
    if user_threads() is not None:
        return None
    return max(1, available_cpus() // processes)


def processes_per_cpus() -> int:
    """How many single-run processes fit this process's CPUs without oversubscribing them: one
    per CPU, or ``CPUs // OMP_NUM_THREADS`` when the user has set that (at least 1)."""
    return max(1, available_cpus() // (user_threads() or 1))


def seed_all_rng(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def shared_seed(seed: int) -> int:
    """``seed`` if it is >= 0, else a random seed drawn on rank 0 and shared with every rank.

    Samplers must agree across ranks (they shard one permutation), so a "random" seed is drawn
    once, not per process.
    """
    if seed >= 0:
        return seed
    from fima.utils import comm

    return int(comm.broadcast_object(int.from_bytes(os.urandom(4), "little") % 2**31))


def get_rng_state() -> dict[str, Any]:
    """Every global RNG state as plain tensors and lists, loadable with ``weights_only=True``."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    random.setstate(_to_tuples(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without disturbing any global RNG: the states are restored on exit.

    Evaluation during training runs inside it, so that training continues exactly as if it had
    not run, and a resumed run does not depend on where evaluations fell.
    """
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple | list) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
