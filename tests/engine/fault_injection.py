"""Test-only instrumentation of ``tools/train_net.py`` runs, loaded with ``--import <this file>``.

Nothing here is part of fima: tests load it into the processes they start, to record what a run
did and to stop it at a chosen point, where the test kills it. It acts only through these
environment variables (every rank of a run reads them):

- ``FIMA_TEST_DIR``: a directory (not OUTPUT_DIR) for what follows. Every rank appends
  ``<iteration> <name>=<float.hex> ...`` to ``losses.rank<r>.txt`` after each step, and at the
  end of a completed run saves its model and optimizer state to ``state.rank<r>.pth``.
- ``FIMA_TEST_PAUSE_AT=<k>``: every rank (or only rank ``FIMA_TEST_PAUSE_RANK``, if set)
  creates ``paused.rank<r>`` and sleeps at the start of iteration k (in the middle of training).
- ``FIMA_TEST_PAUSE_IN_SAVE=<k>``: the checkpoint of iteration k is half written to its
  temporary file (flushed and fsynced) when the rank that writes it creates ``paused.rank<r>``
  and sleeps (in the middle of a checkpoint write).

It also registers ``NaNFIMA``: FIMA whose instance loss is NaN at iteration
``TEST_FAULT.NAN_ITER`` on rank ``TEST_FAULT.NAN_RANK`` (config keys added by :func:`add_config`).
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

import torch

from fima.config.config import CfgNode
from fima.config.config import CfgNode as CN
from fima.engine import DefaultTrainer, HookBase
from fima.modeling.ssl.build import SSL_METHOD_REGISTRY
from fima.modeling.ssl.fima import FIMA
from fima.utils import comm
from fima.utils.events import get_event_storage

TEST_DIR = os.environ.get("FIMA_TEST_DIR", "")


def add_config(cfg: CfgNode) -> None:
    cfg.TEST_FAULT = CN()
    cfg.TEST_FAULT.NAN_ITER = -1
    cfg.TEST_FAULT.NAN_RANK = 0


def _pause() -> None:
    """Mark this rank as paused, then wait to be killed."""
    with open(os.path.join(TEST_DIR, f"paused.rank{comm.get_rank()}"), "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(60)


@SSL_METHOD_REGISTRY.register()
class NaNFIMA(FIMA):
    """FIMA whose instance loss becomes NaN at one iteration on one rank."""

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__(cfg)
        self.nan_iter = cfg.TEST_FAULT.NAN_ITER
        self.nan_rank = cfg.TEST_FAULT.NAN_RANK

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        losses = super().forward(batch)
        if get_event_storage().iter == self.nan_iter and comm.get_rank() == self.nan_rank:
            losses["loss_inst"] = losses["loss_inst"] * float("nan")
        return losses


class Recorder(HookBase):
    """Append each step's exact loss terms; save the final state of a completed run."""

    def __init__(self) -> None:
        self.path = os.path.join(TEST_DIR, f"losses.rank{comm.get_rank()}.txt")

    def after_step(self) -> None:
        terms = " ".join(f"{k}={v.hex()}" for k, v in sorted(self.trainer.loss_dict.items()))
        with open(self.path, "a") as f:
            f.write(f"{self.trainer.iter} {terms}\n")

    def after_train(self) -> None:
        if not self.trainer.failed:
            state = {
                "model": self.trainer.method.state_dict(),
                "optimizer": self.trainer.optimizer.state_dict(),
            }
            torch.save(state, os.path.join(TEST_DIR, f"state.rank{comm.get_rank()}.pth"))


class PauseAt(HookBase):
    def __init__(self, iteration: int, rank: int) -> None:
        self.iteration = iteration
        self.rank = rank

    def before_step(self) -> None:
        if self.trainer.iter == self.iteration and self.rank in (-1, comm.get_rank()):
            _pause()


_real_save = torch.save


def _save_pausing_midway(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    pause_iter = int(os.environ.get("FIMA_TEST_PAUSE_IN_SAVE", "-1"))
    if isinstance(obj, dict) and obj.get("iteration") == pause_iter and hasattr(f, "fileno"):
        buffer = io.BytesIO()
        _real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        _pause()
    _real_save(obj, f, *args, **kwargs)


_build_hooks = DefaultTrainer.build_hooks


def _build_hooks_with_faults(self: DefaultTrainer) -> list[HookBase | None]:
    pause_at = int(os.environ.get("FIMA_TEST_PAUSE_AT", "-1"))
    pause_rank = int(os.environ.get("FIMA_TEST_PAUSE_RANK", "-1"))
    pause = PauseAt(pause_at, pause_rank) if pause_at >= 0 else None
    return [*_build_hooks(self), Recorder(), pause]


if TEST_DIR:
    DefaultTrainer.build_hooks = _build_hooks_with_faults
    torch.save = _save_pausing_midway
