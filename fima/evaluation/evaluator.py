"""Combining evaluators, and keeping the best weights by a validation metric.

An evaluator is any object with ``evaluate(model) -> dict[str, float]`` that runs on every rank
(``DefaultTrainer.test`` calls it with the unwrapped model in eval mode; ``EvalHook`` puts the
results into the event storage). One may also define ``check(model)``, which builds what the
evaluation reads and raises if it could not run (a split that does not build, videos without a
label); a training run calls it at start-up and ``--eval-only`` before it loads the weights, so
that such a problem stops the run before anything is spent, and the periodic evaluations do not
build the datasets again to check them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from fima.checkpoint import atomic_write
from fima.utils import comm
from fima.utils.events import get_event_storage, has_event_storage
from fima.utils.files import set_aside

logger = logging.getLogger(__name__)


class Evaluator(Protocol):
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...


def as_metrics(results: dict[str, Any], finite: bool = True) -> dict[str, float]:
    """An evaluator's results as the flat ``{name: float}`` the writers, the best-model selector
    and ``results.json`` take: what ``float()`` takes (an evaluator of one's own may give 0-d
    tensors or numpy scalars).

    Args:
        results: what ``evaluate(model)`` returned.
        finite: refuse NaN and infinities (during training, where the storage and the best-model
            selection would take them; ``--eval-only`` reports them as they are).

    Raises:
        ValueError: a result that is not a number (a nested dict, say), or not finite.
    """
    metrics: dict[str, float] = {}
    for name, value in results.items():
        try:
            metrics[name] = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"Evaluation result {name}={value!r} is not a number: an evaluator returns a "
                "flat {name: float} dict"
            ) from None
        if finite and not math.isfinite(metrics[name]):
            raise ValueError(f"Evaluation result {name}={value!r} is not finite")
    return metrics


def check_evaluator(evaluator: Any, model: nn.Module) -> None:
    """Run ``evaluator.check(model)`` where the evaluator has one (see the module doc)."""
    check = getattr(evaluator, "check", None)
    if check is not None:
        check(model)


class BestModelSelector:
    """Keep the weights of the evaluation with the highest ``metric`` (a validation metric).

    ``OUTPUT_DIR/best/model_best.pth`` holds ``{"model", "iteration", "metric", "value"}`` (a
    classifier checkpoint: ``--eval-only MODEL.WEIGHTS .../model_best.pth`` evaluates it) and
    ``model_best.json`` the same without weights. It sits in a folder of its own so that
    ``--resume``, which looks at the ``.pth`` files of OUTPUT_DIR, never mistakes it for the run's
    state. A resumed run continues from the best value on disk; a run that starts over
    (:meth:`start_over`) keeps an earlier run's ``best/`` as ``best.<time>`` when it saves its own.
    """

    def __init__(self, metric: str, output_dir: str) -> None:
        self.metric = metric
        self.directory = os.path.join(output_dir, "best")
        self.best: float | None = None
        self._set_aside = False
        summary = os.path.join(self.directory, "model_best.json")
        if os.path.isfile(summary):
            with open(summary) as f:
                previous = json.load(f)
            if previous.get("metric") == metric:
                self.best = float(previous["value"])

    def start_over(self) -> None:
        """Forget the best value on disk: this run did not resume the run that saved it (a run
        stopped before its first checkpoint, started again), so its weights are not this run's
        to keep or to beat. They are kept aside at this run's first save."""
        self.best = None
        self._set_aside = True

    def update(self, results: dict[str, float], model: nn.Module, iteration: int) -> bool:
        """Save ``model`` if ``results[metric]`` beats the best so far; return whether it did.

        Raises:
            KeyError: the results have no such metric (the message lists those they have).
        """
        if self.metric not in results:
            raise KeyError(
                f"TEST.BEST_METRIC {self.metric!r} is not among the evaluation results: "
                f"{sorted(results)}"
            )
        value = float(results[self.metric])
        if not math.isfinite(value) or (self.best is not None and value <= self.best):
            return False
        self.best = value
        if comm.is_main_process():
            if self._set_aside:
                kept = set_aside(self.directory)
                if kept is not None:
                    logger.info("The best weights of an earlier run are kept in %s", kept)
                self._set_aside = False
            os.makedirs(self.directory, exist_ok=True)
            summary = {"metric": self.metric, "value": value, "iteration": iteration}
            payload = {"model": model.state_dict(), **summary}
            atomic_write(
                os.path.join(self.directory, "model_best.pth"), lambda f: torch.save(payload, f)
            )
            atomic_write(
                os.path.join(self.directory, "model_best.json"),
                lambda f: json.dump(summary, f, indent=1),
                mode="w",
            )
            logger.info(
                "New best %s = %.3f at iteration %d: saved best/model_best.pth",
                self.metric,
                value,
                iteration,
            )
        return True


class EvaluatorList:
    """Run several evaluators and merge their flat results; optionally select the best weights.

    Selection happens only inside a training run (where there is an event storage, which gives
    the iteration); ``--eval-only`` never writes a best model.
    """

    def __init__(
        self, evaluators: Sequence[Evaluator], selector: BestModelSelector | None = None
    ) -> None:
        self.evaluators = list(evaluators)
        self.selector = selector

    def check(self, model: nn.Module) -> None:
        """Run every evaluator's ``check(model)``, where it has one (see the module doc)."""
        for evaluator in self.evaluators:
            check_evaluator(evaluator, model)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        results: dict[str, Any] = {}
        for evaluator in self.evaluators:
            for name, value in evaluator.evaluate(model).items():
                if name in results:
                    raise KeyError(f"Two evaluators report the metric {name!r}")
                results[name] = value
        if self.selector is not None and has_event_storage():
            self.selector.update(results, model, get_event_storage().iter)
        return results
