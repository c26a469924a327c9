"""Training hooks: timing, LR schedule, key-encoder momentum, queues, checkpoints, evaluation,
image summaries, writers and the non-finite loss guard.

Under DDP every rank registers the same hooks (``DefaultTrainer.build_hooks``), except
:class:`PeriodicWriter` and :class:`VisualizationHook`, which only rank 0 has. Each hook's
docstring says whether it runs a collective, i.e. whether it relies on running on all ranks.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from fvcore.common.checkpoint import PeriodicCheckpointer as _FvcorePeriodicCheckpointer
from fvcore.common.timer import Timer
from fvcore.nn.precise_bn import get_bn_modules, update_bn_stats

from fima.engine.train_loop import HookBase
from fima.evaluation.evaluator import as_metrics
from fima.utils import comm
from fima.utils.env import preserved_rng
from fima.utils.events import EventWriter

logger = logging.getLogger(__name__)


class IterationTimer(HookBase):
    """Put the duration of each step (``time``) into the storage; log the total at the end.

    Register it first: a step's time then runs from its ``before_step``, which is called
    first, to its ``after_step``, also called first, so it includes the other hooks'
    ``before_step`` work (the momentum update) and the step itself, but not their
    ``after_step`` work (queue update, checkpoints, evaluation, writers), as in detectron2.
    No collective.
    """

    def __init__(self, warmup_iter: int = 3) -> None:
        self._warmup_iter = warmup_iter
        self._step_timer = Timer()
        self._start_time = time.perf_counter()
        self._total_timer = Timer()

    def before_train(self) -> None:
        """Start the total clock, with the step timer paused."""
        self._start_time = time.perf_counter()
        self._total_timer.reset()
        self._total_timer.pause()

    def after_train(self) -> None:
        """Log the time per step (after the warm-up steps) and the time outside steps."""
        total = time.perf_counter() - self._start_time
        hook_time = total - self._total_timer.seconds()
        num_iter = self.trainer.storage.iter + 1 - self.trainer.start_iter - self._warmup_iter
        if num_iter > 0 and self._total_timer.seconds() > 0:
            logger.info(
                "Total training time: %s (%.4f s / it over %d iterations)",
                datetime.timedelta(seconds=int(total)),
                self._total_timer.seconds() / num_iter,
                num_iter,
            )
        logger.info(
            "Total time outside steps (hooks, start-up): %s",
            datetime.timedelta(seconds=int(hook_time)),
        )

    def before_step(self) -> None:
        """Start timing the step."""
        self._step_timer.reset()
        self._total_timer.resume()

    def after_step(self) -> None:
        """Put the step's ``time`` into the storage, once the warm-up steps are over."""
        iter_done = self.trainer.storage.iter - self.trainer.start_iter + 1
        if iter_done >= self._warmup_iter:
            self.trainer.storage.put_scalar("time", self._step_timer.seconds())
        else:
            self._start_time = time.perf_counter()
            self._total_timer.reset()
        self._total_timer.pause()


class LRScheduler(HookBase):
    """Step the learning-rate scheduler after every iteration and record ``lr``.

    No collective, but every rank steps its own scheduler, so that all ranks use the same rate.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        self._optimizer = optimizer
        self.scheduler = scheduler

    def after_step(self) -> None:
        """Record the rate this step used as ``lr``, then step the scheduler."""
        self.trainer.storage.put_scalar(
            "lr", self._optimizer.param_groups[0]["lr"], smoothing_hint=False
        )
        self.scheduler.step()


class MomentumSchedule(HookBase):
    """Update the key encoder by momentum once per optimizer step, before it (all ranks).

    ``constant`` uses ``base`` throughout; ``cosine`` raises it from ``base`` to 1 over the run
    (``m = 1 - (1 - base) * (cos(pi * t / T) + 1) / 2``, BYOL's schedule). The momentum is a
    function of the iteration alone, so a resumed run continues the schedule exactly. The model
    must define ``momentum_update(m)``. No collective: every rank updates its own key encoder
    from identical query weights, so the key encoders stay identical.
    """

    def __init__(self, base: float, schedule: str = "constant") -> None:
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"momentum schedule must be 'constant' or 'cosine', got {schedule!r}")
        self.base = base
        self.schedule = schedule

    def momentum_at(self, iteration: int, max_iter: int) -> float:
        """The momentum of one iteration.

        Args:
            iteration: the iteration, ``0 <= iteration < max_iter``.
            max_iter: the run's ``SOLVER.MAX_ITER``.

        Returns:
            ``m`` in ``[base, 1]``.
        """
        if self.schedule == "constant":
            return self.base
        return 1.0 - (1.0 - self.base) * (math.cos(math.pi * iteration / max_iter) + 1.0) / 2.0

    def before_step(self) -> None:
        """Update the key encoder with this iteration's momentum; record it as ``momentum``."""
        momentum = self.momentum_at(self.trainer.iter, self.trainer.max_iter)
        comm.unwrap_model(self.trainer.model).momentum_update(momentum)
        self.trainer.storage.put_scalar("momentum", momentum, smoothing_hint=False)


class QueueUpdate(HookBase):
    """Enqueue the keys of the step's micro-batches once per optimizer step, after it.

    Runs on all ranks: the queues all-gather the keys of every rank, so they stay identical.
    Register it before :class:`PeriodicCheckpointer`, so that a checkpoint holds the queues that
    the next step sees. The model must define ``update_queues()``.
    """

    def __init__(self) -> None:
        # The queues' sizes are checked against an epoch of keys after the first step.
        self._checked = False

    def after_step(self) -> None:
        """Enqueue the step's keys; after the first step, warn about queues that hold an epoch
        of keys (rank 0)."""
        model = comm.unwrap_model(self.trainer.model)
        model.update_queues()
        if not self._checked:
            self._checked = True
            iters_per_epoch = getattr(self.trainer, "iters_per_epoch", None)
            if iters_per_epoch and comm.is_main_process():
                warn_long_queues(model, iters_per_epoch)


def warn_long_queues(model: torch.nn.Module, iters_per_epoch: int) -> None:
    """Warn about every :class:`~fima.modeling.queue.KeyQueue` of ``model`` that holds at least
    an epoch of keys, judged by what its last enqueue wrote (one optimizer step's keys).

    Such a queue holds every video's own keys from its previous visit, so each video meets
    stale copies of itself as negatives. The recipe's instance and motion queues hold 6-14% of
    an epoch's keys (RECIPE.md §7: 2240 keys on UCF101, 65536 on Kinetics-400, 2 or 4 keys per
    video); a config made for a large dataset and run on a small one is how this happens.

    Args:
        model: the unwrapped model, after its first queue update.
        iters_per_epoch: optimizer steps per epoch of the training data.
    """
    from fima.modeling.queue import KeyQueue  # engine imports modeling, not the reverse

    for name, queue in model.named_modules():
        if not isinstance(queue, KeyQueue) or not queue.last_enqueued:
            continue
        epoch_keys = queue.last_enqueued * iters_per_epoch
        if queue.size >= epoch_keys:
            # "queue" is MoCo's instance queue; the others say what they hold ("motion_queue").
            label = "instance queue" if name == "queue" else name.replace("_", " ")
            logger.warning(
                "The %s holds %d keys, %.1f epochs' worth (%d keys per step, %d steps per "
                "epoch): every video meets its own keys from earlier epochs as negatives. The "
                "recipe's instance and motion queues hold 6-14%% of an epoch's keys (RECIPE.md "
                "§7); set a smaller queue size for this dataset",
                label, queue.size, queue.size / epoch_keys, queue.last_enqueued, iters_per_epoch,
            )  # fmt: skip


class NonFiniteLossGuard(HookBase):
    """Stop every rank, before the optimizer step, when any rank's loss is NaN or infinite.

    Runs on all ranks (one tiny all-reduce per step; the loss terms of every rank are gathered
    only when one is bad), so all of them stop at the same iteration with the same message. The
    weights, queues and key encoder are not updated and no checkpoint is written, so the last
    checkpoint on disk stays intact.
    """

    def after_backward(self) -> None:
        """Raise on every rank when any rank's loss is not finite.

        Raises:
            FloatingPointError: naming the iteration, the bad ranks and their loss terms.
        """
        losses = self.trainer.loss_dict
        bad = not all(math.isfinite(v) for v in losses.values())
        flag = comm.all_reduce_tensor(
            torch.tensor([float(bad)], device=comm.collective_device()), op="max"
        )
        if flag.item() == 0:
            return
        per_rank = comm.all_gather_object(losses)

        def terms(values: dict[str, float]) -> str:
            return ", ".join(f"{k}={v:.6g}" for k, v in sorted(values.items()))

        if len(per_rank) == 1:
            where = terms(losses)
        else:
            bad_ranks = [
                r for r, v in enumerate(per_rank) if not all(map(math.isfinite, v.values()))
            ]
            where = "; ".join(f"rank {r}: {terms(per_rank[r])}" for r in bad_ranks)
        raise FloatingPointError(
            f"Loss became non-finite at iteration {self.trainer.iter} ({where}); stopping "
            f"{'all ranks' if len(per_rank) > 1 else 'training'} before the optimizer step. "
            "The last checkpoint on disk is intact: lower the learning rate or check the data, "
            "then resume with --resume."
        )


class PreciseBN(HookBase):
    """Recompute the BatchNorm running statistics with the weights fixed (fvcore's
    ``update_bn_stats``: the average over ``num_iter`` batches instead of a moving average over
    past weights), every ``period`` iterations and at the last one.

    Register it before :class:`PeriodicCheckpointer` and :class:`EvalHook`, so that the checkpoint
    and the evaluation hold the new statistics. Runs on all ranks: each averages its own share of
    the batches (SyncBatchNorm layers all-reduce themselves), as training keeps per-rank
    statistics. ``make_batches()`` must start the same batches every time and the RNG states are
    restored afterwards, so training continues as if it had not run and a resumed run is exact.
    """

    def __init__(
        self,
        period: int,
        model: torch.nn.Module,
        make_batches: Callable[[], Iterable[Any]],
        num_iter: int,
        autocast: Callable[[], AbstractContextManager[Any]],
    ) -> None:
        self._period = period
        self._model = model
        self._make_batches = make_batches
        self._num_iter = num_iter
        self._autocast = autocast
        self._said_nothing_to_do = False

    def after_step(self) -> None:
        """Recompute the statistics every ``period`` iterations and at the last one."""
        next_iter = self.trainer.iter + 1
        periodic = self._period > 0 and next_iter % self._period == 0
        if periodic or next_iter == self.trainer.max_iter:
            self.update_stats()

    def update_stats(self) -> None:
        """Recompute the statistics of every BatchNorm layer in training mode."""
        if not get_bn_modules(self._model):
            if not self._said_nothing_to_do:
                self._said_nothing_to_do = True
                logger.info(
                    "TEST.PRECISE_BN: no BatchNorm layer is in training mode (a linear probe's "
                    "frozen backbone keeps its checkpoint's statistics); nothing to recompute"
                )
            return
        start = time.perf_counter()
        with preserved_rng(), self._autocast():
            update_bn_stats(self._model, self._make_batches(), self._num_iter)
        logger.info(
            "Precise BatchNorm statistics from %d batches in %.1f s",
            self._num_iter,
            time.perf_counter() - start,
        )


class PeriodicCheckpointer(_FvcorePeriodicCheckpointer, HookBase):
    """Save ``model_<iter>`` every ``period`` iterations and ``model_final`` after the last one;
    keep the newest ``max_to_keep`` periodic ones. A run that stops early (an exception, the
    non-finite loss guard) writes nothing more, so its last periodic checkpoint stays as it was.

    Runs on all ranks: saving gathers every rank's own state (RNG states, BatchNorm statistics;
    a collective); only rank 0 writes and deletes files.
    """

    def before_train(self) -> None:
        """Adopt the trainer's ``max_iter``; on rank 0, count the periodic checkpoints already
        in the output directory and keep a finished run's ``model_final`` that a longer run
        would overwrite."""
        self.max_iter = self.trainer.max_iter
        if not comm.is_main_process():
            return
        save_dir = self.checkpointer.save_dir
        # A resumed run counts the periodic checkpoints it finds towards MAX_TO_KEEP.
        if self.max_to_keep is not None:
            pattern = re.compile(rf"^{re.escape(self.file_prefix)}_(\d{{7}})\.pth$")
            found = sorted(
                (int(match.group(1)), name)
                for name in (os.listdir(save_dir) if os.path.isdir(save_dir) else [])
                if (match := pattern.match(name))
            )
            self.recent_checkpoints = [os.path.join(save_dir, name) for _, name in found]
        # A finished run continued to a larger MAX_ITER writes model_final again: keep the one
        # it resumed from under its iteration's name (a hard link: no copy), rather than lose it.
        if self.trainer.continues_finished_run and self.trainer.start_iter < self.max_iter:
            final = os.path.join(save_dir, f"{self.file_prefix}_final.pth")
            kept = os.path.join(
                save_dir, f"{self.file_prefix}_{self.trainer.start_iter - 1:07d}.pth"
            )
            if not os.path.exists(kept):
                os.link(final, kept)
                logger.info("Kept the previous %s as %s", os.path.basename(final), kept)

    def after_step(self) -> None:
        """Save when the schedule says so (:meth:`step`)."""
        self.step(self.trainer.iter)

    def step(self, iteration: int, **kwargs: Any) -> None:
        """fvcore's schedule, except that only rank 0 deletes old files, after the new one and
        its pointer are on disk (fvcore lets every rank delete what the pointer names).

        Args:
            iteration: the iteration just finished.
            **kwargs: further entries of the checkpoint.
        """
        iteration = int(iteration)
        state = {"iteration": iteration, **kwargs}
        if (iteration + 1) % self.period == 0:
            name = f"{self.file_prefix}_{iteration:07d}"
            self.checkpointer.save(name, **state)
            if self.max_to_keep is not None and comm.is_main_process():
                self.recent_checkpoints.append(
                    os.path.join(self.checkpointer.save_dir, f"{name}.pth")
                )
                while len(self.recent_checkpoints) > self.max_to_keep:
                    old = self.recent_checkpoints.pop(0)
                    if self.path_manager.exists(old):
                        self.path_manager.rm(old)
        if self.max_iter is not None and iteration >= self.max_iter - 1:
            self.checkpointer.save(f"{self.file_prefix}_final", **state)


class EvalHook(HookBase):
    """Run ``eval_function()`` every ``period`` iterations and after the last one; put its flat
    ``{name: float}`` results into the storage.

    Runs on all ranks (evaluators gather). Evaluation runs with the RNG states saved and restored
    around it, so that training continues as if it had not run: a resumed run is exact wherever
    the evaluations fell. Not after a failed run.
    """

    def __init__(self, period: int, eval_function: Callable[[], dict[str, float]]) -> None:
        self._period = period
        self._func = eval_function
        self.latest: dict[str, float] = {}

    def _do_eval(self) -> None:
        with preserved_rng():
            results = self._func() or {}
        scalars = as_metrics(results)
        for name, value in scalars.items():
            self.trainer.storage.put_scalar(name, value, smoothing_hint=False)
        self.latest = scalars
        comm.synchronize()

    def after_step(self) -> None:
        """Evaluate every ``period`` iterations, except after the last one (see
        :meth:`after_train`)."""
        next_iter = self.trainer.iter + 1
        if (
            self._period > 0
            and next_iter % self._period == 0
            and next_iter != self.trainer.max_iter
        ):
            self._do_eval()

    def after_train(self) -> None:
        """Evaluate the final model, unless training failed."""
        if self.trainer.iter >= self.trainer.max_iter and not self.trainer.failed:
            self._do_eval()


class PeriodicWriter(HookBase):
    """Call the writers every ``period`` iterations, at the last one and at the end.

    Rank 0 only (the writers write files); no collective. Metrics are averaged over ranks when
    they are put into the storage.
    """

    def __init__(self, writers: Sequence[EventWriter], period: int = 20) -> None:
        self._writers = list(writers)
        self._period = period

    def before_train(self) -> None:
        """Start every writer at the run's first iteration."""
        trainer = self.trainer
        # What an earlier run logged from start_iter on is replaced: the steps after its last
        # checkpoint, which this run trains again, or the final records of a finished run that
        # this one has nothing to add to and evaluates again. A finished run continued to a
        # larger MAX_ITER keeps the records it made after training, at start_iter: they are
        # about the weights this run starts from.
        start = trainer.start_iter
        keep_final = trainer.continues_finished_run and start < trainer.max_iter
        for writer in self._writers:
            writer.start(start, keep_final)

    def after_step(self) -> None:
        """Write every ``period`` iterations and at the last one."""
        if (
            self.trainer.iter + 1
        ) % self._period == 0 or self.trainer.iter == self.trainer.max_iter - 1:
            for writer in self._writers:
                writer.write()

    def after_train(self) -> None:
        """Write what the storage received since the last write, then close the writers."""
        for writer in self._writers:
            writer.write()
            writer.close()


class BadVideoReport(HookBase):
    """Write ``bad_videos.txt`` every ``period`` iterations and at the end, and put the count of
    bad videos into the storage. Runs on all ranks (each merges its own list into the file)."""

    def __init__(self, tracker: Any, period: int) -> None:
        self.tracker = tracker
        self._period = period

    def after_step(self) -> None:
        """Report every ``period`` iterations."""
        if (self.trainer.iter + 1) % self._period == 0:
            self._report()

    def after_train(self) -> None:
        """Report at the end, also after a failure (no collective)."""
        self._report()

    def _report(self) -> None:
        self.tracker.write()
        self.trainer.storage.put_scalar("bad_videos", self.tracker.bad_events, smoothing_hint=False)


class VisualizationHook(HookBase):
    """Every ``period`` iterations and after the last one, put the grids of a few fixed training
    clips (frames, frame difference, activation map, FIMA's foreground mask; see
    :mod:`fima.utils.visualization`) into the storage as images, for TensorBoard.

    Rank 0 only; no collective (it calls the unwrapped encoders directly, in eval mode). The
    clips are decoded once, before training, from the dataset itself (the middle test clip of
    evenly spaced videos), never from the training loader, and drawing runs with the RNG states
    preserved and the model's mode restored, so the run continues exactly as without the hook.
    Each drawing's duration goes into the storage as ``vis_time``.
    """

    def __init__(self, cfg: Any, period: int, num_clips: int) -> None:
        self.cfg = cfg
        self._period = period
        self._num_clips = num_clips
        self._clips: list[tuple[str, torch.Tensor]] = []

    def before_train(self) -> None:
        """Decode the clips to draw, once."""
        from fima.utils.visualization import dataset_clips

        self._clips = dataset_clips(self.cfg, self.cfg.DATA.TRAIN_SPLIT, self._num_clips)

    def after_step(self) -> None:
        """Draw every ``period`` iterations and after the last one."""
        next_iter = self.trainer.iter + 1
        if self._clips and (next_iter % self._period == 0 or next_iter == self.trainer.max_iter):
            self._draw()

    def _draw(self) -> None:
        from fima.utils.visualization import (
            compute_maps,
            feature_encoders,
            render_grid,
            to_tensor,
        )

        start = time.perf_counter()
        model = self.trainer.model
        was_training = model.training
        encoder, mask_encoder = feature_encoders(comm.unwrap_model(model))
        clips = torch.stack([clip for _, clip in self._clips])
        model.eval()
        try:
            with preserved_rng():
                all_maps = compute_maps(encoder, clips, self.cfg, mask_encoder)
        finally:
            model.train(was_training)
        storage = self.trainer.storage
        for i, ((path, _), maps) in enumerate(zip(self._clips, all_maps)):
            name = os.path.splitext(os.path.basename(path))[0]
            grid = render_grid(maps, title=f"iteration {self.trainer.iter + 1}: {name}")
            storage.put_image(f"vis/{i}_{name}", to_tensor(grid))
        storage.put_scalar("vis_time", time.perf_counter() - start, smoothing_hint=False)
