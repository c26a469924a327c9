"""launch() in one process, its argument checks and the torchrun detection (the multi-process
paths run in tests/engine/test_distributed.py and tests/utils/test_comm.py)."""

from __future__ import annotations

import datetime
import re
import socket

import pytest
import torch

from fima.config import ConfigError, get_cfg
from fima.config.validation import validate_cfg
from fima.engine import default_argument_parser, launch
from fima.engine.defaults import resolve_device
from fima.engine.launch import (
    _find_free_port,
    check_launch_arguments,
    launched_by_torchrun,
    resolve_backend,
)
from fima.utils import comm


def test_one_process_calls_main_directly() -> None:
    assert launch(lambda a, b: a + b, 1, args=(2, 3)) == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_gpus_per_machine": 0}, "need at least one process"),
        ({"num_machines": 2, "machine_rank": 2}, "a rank below --num-machines"),
        ({"num_machines": 2, "machine_rank": 1, "dist_url": "auto"}, "pass tcp://HOST:PORT"),
        (
            {"num_gpus_per_machine": 2, "timeout": datetime.timedelta(0)},
            "--dist-timeout 0: must be a positive number of seconds",
        ),
        (
            {"num_gpus_per_machine": 2, "timeout": datetime.timedelta(seconds=-5)},
            "--dist-timeout -5: must be a positive number of seconds",
        ),
        ({"num_gpus_per_machine": 2, "dist_url": "foo"}, "--dist-url foo: expected auto"),
        ({"num_gpus_per_machine": 2, "dist_url": "tcp://host"}, "--dist-url tcp://host: "),
        ({"num_gpus_per_machine": 2, "dist_url": "tcp://h:99999"}, "--dist-url tcp://h:99999"),
        ({"num_gpus_per_machine": 2, "dist_url": "file://relative"}, "file:///PATH"),
    ],
)
def test_bad_arguments_fail_before_starting_anything(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        launch(print, **kwargs)


@pytest.mark.parametrize(
    "dist_url", ["auto", "tcp://127.0.0.1:{port}", "tcp://[::1]:{port}", "file:///tmp/rdzv"]
)
def test_rendezvous_urls_that_init_process_group_takes(dist_url: str) -> None:
    check_launch_arguments(2, 1, 0, dist_url.format(port=_find_free_port()), 1800.0)


def test_a_rendezvous_port_in_use_is_refused_on_machine_0_before_anything_starts() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        dist_url = f"tcp://127.0.0.1:{port}"
        with pytest.raises(ValueError, match=f"--dist-url {dist_url}: port {port} is in use"):
            check_launch_arguments(2, 1, 0, dist_url, 1800.0)
        with pytest.raises(ValueError, match="is in use"):
            launch(print, 1, num_machines=2, machine_rank=0, dist_url=dist_url)
        # Machine 1 connects to machine 0's port, and one process listens on none.
        check_launch_arguments(1, 2, 1, dist_url, 1800.0)
        check_launch_arguments(1, 1, 0, dist_url, 1800.0)


def test_a_timeout_must_be_a_finite_positive_number_of_seconds() -> None:
    for seconds in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="--dist-timeout"):
            check_launch_arguments(1, 1, 0, "auto", seconds)


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


def test_backend_follows_the_gpus_unless_named(monkeypatch) -> None:
    assert resolve_backend("auto") == "gloo"  # the suite hides GPUs
    assert resolve_backend("gloo") == "gloo"
    with pytest.raises(ValueError, match="none is visible"):
        resolve_backend("nccl")
    with pytest.raises(ValueError, match="choose auto, nccl or gloo"):
        resolve_backend("mpi")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto") == "nccl"
    assert resolve_backend("gloo") == "gloo"


def test_the_command_line_names_the_backend() -> None:
    parser = default_argument_parser()
    config = ["--config-file", "c.yaml"]
    assert parser.parse_args(config).dist_backend == "auto"
    assert parser.parse_args([*config, "--dist-backend", "gloo"]).dist_backend == "gloo"
    with pytest.raises(SystemExit):
        parser.parse_args([*config, "--dist-backend", "mpi"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # argparse.REMAINDER took --config-file for an override and called it missing.
        (["SOLVER.BASE_LR", "0.1", "--config-file", "c.yaml"], "options (--config-file) must"),
        (["--resume", "SEED", "-1", "--config-file=c.yaml"], "options (--config-file=c.yaml) "),
        (["SOLVER.BASE_LR", "0.1"], "the following arguments are required: --config-file"),
    ],
)
def test_options_after_the_overrides_are_misplaced_not_missing(capsys, argv, message) -> None:
    with pytest.raises(SystemExit):
        default_argument_parser().parse_args(argv)
    assert message in capsys.readouterr().err
    args = default_argument_parser().parse_args(["--config-file", "c.yaml", "SEED", "-1"])
    assert args.config_file == "c.yaml" and args.opts == ["SEED", "-1"]


def _fake_process_group(monkeypatch, backend: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(comm, "is_distributed", lambda: True)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "backend", lambda: backend)


def test_gloo_processes_on_a_gpu_machine_compute_on_the_cpu(monkeypatch) -> None:
    cfg = get_cfg()
    _fake_process_group(monkeypatch, "gloo")
    assert not comm.uses_gpu()
    assert resolve_device(cfg).type == "cpu"  # MODEL.DEVICE auto
    _fake_process_group(monkeypatch, "nccl")
    assert comm.uses_gpu()


def test_cpu_device_under_nccl_is_a_config_error(monkeypatch) -> None:
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.SOLVER.IMS_PER_BATCH = 8
    _fake_process_group(monkeypatch, "nccl")
    with pytest.raises(ConfigError, match="MODEL.DEVICE: cpu.*--dist-backend gloo"):
        validate_cfg(cfg, world_size=2)
    _fake_process_group(monkeypatch, "gloo")
    validate_cfg(cfg, world_size=2)
    # The other way round: gloo processes do not pin a GPU each, so a GPU device is refused.
    cfg.MODEL.DEVICE = "cuda"
    with pytest.raises(ConfigError, match="MODEL.DEVICE: cuda.*joined by gloo"):
        validate_cfg(cfg, world_size=2)


def test_usage_shows_the_config_file_as_required(capsys) -> None:
    # Checked after parsing (so that a misplaced one is not called missing), but still shown as
    # required, in --help as in the usage line of an error.
    parser = default_argument_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    assert "[-h] --config-file FILE [--resume]" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["SEED", "1"])
    assert "[-h] --config-file FILE [--resume]" in capsys.readouterr().err
