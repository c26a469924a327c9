"""Optimizer and learning-rate schedule from the config (fvcore param schedulers)."""

from __future__ import annotations

import logging
import math

import torch
from fvcore.common.param_scheduler import (
    CosineParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
)
from torch import nn

from fima.config.config import CfgNode

logger = logging.getLogger(__name__)


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay, optional Nesterov) or AdamW over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    solver = cfg.SOLVER
    if solver.OPTIMIZER == "SGD":
        return torch.optim.SGD(
            params,
            lr=solver.BASE_LR,
            momentum=solver.MOMENTUM,
            weight_decay=solver.WEIGHT_DECAY,
            nesterov=solver.NESTEROV,
        )
    return torch.optim.AdamW(params, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY)


class LRMultiplier(torch.optim.lr_scheduler.LRScheduler):
    """Learning rate = base LR x ``multiplier(progress)``, stepped once per iteration.

    With ``unit > 1`` (iterations per epoch) the progress only advances at unit boundaries, so
    the learning rate is constant within an epoch, as in the reference.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        multiplier: ParamScheduler,
        max_iter: int,
        unit: int = 1,
        last_iter: int = -1,
    ) -> None:
        self._multiplier = multiplier
        self._max_iter = max_iter
        self._unit = max(unit, 1)
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self) -> dict:
        # The multiplier is rebuilt from the config; only the position matters (and the length,
        # to say when a resumed run changes it).
        return {
            "base_lrs": self.base_lrs,
            "last_epoch": self.last_epoch,
            "max_iter": self._max_iter,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue at the saved position on the schedule that the config now describes.

        The base rates are the config's (``SOLVER.BASE_LR``; a change is logged), and the rate of
        the next step is recomputed, so that a changed ``MAX_ITER`` or schedule applies from the
        first resumed step. Unchanged, the rate is the one the saved run would have used.
        """
        saved = [float(lr) for lr in state_dict.get("base_lrs", self.base_lrs)]
        if saved != [float(lr) for lr in self.base_lrs]:
            logger.warning(
                "Resuming with the config's base learning rates %s instead of the checkpoint's "
                "%s (SOLVER.BASE_LR changed)",
                self.base_lrs,
                saved,
            )
        saved_max_iter = state_dict.get("max_iter", self._max_iter)  # absent before 2026-12-05
        self.last_epoch = state_dict["last_epoch"]
        if saved_max_iter != self._max_iter:
            logger.warning(
                "Resuming with a schedule over %d iterations instead of the checkpoint's %d "
                "(SOLVER.MAX_ITER / MAX_EPOCHS changed): the learning rate of the next step is "
                "%s instead of %s",
                self._max_iter,
                saved_max_iter,
                _format_rates(self.get_lr()),
                _format_rates(self._rates(saved_max_iter)),
            )
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr

    def get_lr(self) -> list[float]:
        return self._rates(self._max_iter)

    def _rates(self, max_iter: int) -> list[float]:
        """The rates at the current position of a schedule over ``max_iter`` iterations."""
        step = (self.last_epoch // self._unit) * self._unit
        factor = self._multiplier(min(step / max_iter, 1.0 - 1e-9))
        return [base * factor for base in self.base_lrs]


def _format_rates(rates: list[float]) -> str:
    return ", ".join(f"{rate:.4g}" for rate in sorted(set(rates)))


def build_lr_scheduler(
    cfg: CfgNode, optimizer: torch.optim.Optimizer, max_iter: int, iters_per_epoch: int
) -> LRMultiplier:
    """The schedule of ``SOLVER.LR_SCHEDULER`` over ``max_iter`` iterations.

    ``cosine`` decays to 0 (no warm-up, RECIPE.md §8); ``step`` multiplies by ``GAMMA`` at each
    epoch in ``STEPS``. ``SCHEDULE_UNIT: epoch`` holds the rate constant within an epoch.
    """
    solver = cfg.SOLVER
    if solver.LR_SCHEDULER == "cosine":
        multiplier: ParamScheduler = CosineParamScheduler(1.0, 0.0)
    else:
        milestones = [int(step * iters_per_epoch) for step in solver.STEPS]
        # A run shortened without its steps (MAX_EPOCHS 50 under the fine-tuning protocol's
        # steps at 60 and 120) would otherwise keep its first rate to the end, unannounced.
        beyond = [s for s, m in zip(solver.STEPS, milestones) if m > max_iter]
        if beyond:
            logger.warning(
                "SOLVER.STEPS %s: the run ends after %.4g epochs (%d iterations), so the "
                "learning rate is not multiplied by SOLVER.GAMMA at epoch(s) %s; set "
                "SOLVER.STEPS within the run",
                tuple(solver.STEPS),
                max_iter / iters_per_epoch,
                max_iter,
                tuple(beyond),
            )
        milestones = sorted({m for m in milestones if 0 < m < max_iter})
        multiplier = MultiStepParamScheduler(
            values=[solver.GAMMA**k for k in range(len(milestones) + 1)],
            num_updates=max_iter,
            milestones=milestones,
        )
    unit = iters_per_epoch if solver.SCHEDULE_UNIT == "epoch" else 1
    return LRMultiplier(optimizer, multiplier, max_iter, unit=unit)


def max_iterations(cfg: CfgNode, iters_per_epoch: int) -> int:
    """``SOLVER.MAX_ITER`` if set, else ``MAX_EPOCHS`` epochs of ``iters_per_epoch``."""
    if cfg.SOLVER.MAX_ITER > 0:
        return int(cfg.SOLVER.MAX_ITER)
    return int(math.ceil(cfg.SOLVER.MAX_EPOCHS * iters_per_epoch))
