"""launch() in one process, its argument checks and the torchrun detection (the multi-process
paths run in tests/engine/test_distributed.py and tests/utils/test_comm.py)."""

from __future__ import annotations

import pytest

from fima.engine import launch
from fima.engine.launch import launched_by_torchrun


def test_one_process_calls_main_directly() -> None:
    assert launch(lambda a, b: a + b, 1, args=(2, 3)) == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_gpus_per_machine": 0}, "need at least one process"),
        ({"num_machines": 2, "machine_rank": 2}, "a rank below --num-machines"),
        ({"num_machines": 2, "machine_rank": 1, "dist_url": "auto"}, "pass tcp://HOST:PORT"),
    ],
)
def test_bad_arguments_fail_before_starting_anything(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        launch(print, **kwargs)


def test_torchrun_is_recognised_from_its_environment(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not launched_by_torchrun()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launched_by_torchrun()
    # A job of one process under torchrun needs no process group.
    assert launch(lambda: "ran", 4) == "ran"
