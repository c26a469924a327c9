"""The training loop: ``HookBase``, ``TrainerBase`` and ``SimpleTrainer``.

``TrainerBase.train`` is the whole loop: inside ``with EventStorage(start_iter)`` it calls the
hooks around each ``run_step``. ``SimpleTrainer.run_step`` is one optimizer step: fetch data, run
the model under autocast when mixed precision is on, sum the losses, backward (through a gradient
scaler for float16), then step the optimizer; with gradient accumulation the data/forward/backward
part repeats ``accum_steps`` times per optimizer step.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fima.config.validation import ConfigError
from fima.utils import comm
from fima.utils.events import EventStorage, get_event_storage
from fima.utils.logger import log_once

if TYPE_CHECKING:
    from fima.config.config import CfgNode

logger = logging.getLogger(__name__)


class HookBase:
    """A hook is called around every step of the loop.

    The order is ``before_train``, then per iteration ``before_step``, ``after_backward`` (after
    the backward pass of all micro-batches, before the optimizer step) and ``after_step``, and
    finally ``after_train``. ``self.trainer`` is a weak proxy of the trainer, set on registration.

    Under DDP every rank runs the same hooks. A hook that runs a collective operation (or calls
    something that does) relies on that, and says so in its docstring. ``after_train`` also runs
    when training stopped on an exception (``trainer.failed`` is then True); a hook must not start
    a collective then, since the other ranks may never join it.
    """

    trainer: Any = None

    def before_train(self) -> None:
        """Called once before the first iteration."""

    def after_train(self) -> None:
        """Called once after the last iteration, or after training stopped on an exception."""

    def before_step(self) -> None:
        """Called before each iteration, with ``trainer.iter`` already set to it."""

    def after_backward(self) -> None:
        """Called after the backward pass of an iteration, before the optimizer step."""

    def after_step(self) -> None:
        """Called after each iteration's optimizer step."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint; only hooks that return a non-empty dict are saved.

        Returns:
            A picklable dict, saved under the hook's class name.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Args:
            state: the dict saved for this hook's class.
        """


class TrainerBase:
    """Iteration-based training with hooks.

    Attributes:
        iter: the current iteration (``start_iter <= iter < max_iter`` during training).
        start_iter, max_iter: the range of this run.
        storage: the ``EventStorage`` of the run.
        failed: whether training stopped on an exception (for ``after_train``).
    """

    def __init__(self) -> None:
        self._hooks: list[HookBase] = []
        self.iter = 0
        self.start_iter = 0
        self.max_iter = 0
        self.failed = False
        # Whether this run starts where a finished run ended (see PeriodicWriter.before_train).
        self.continues_finished_run = False
        self.storage: EventStorage
        # Recent values of the smoothed scalars, from a checkpoint (see ``state_dict``).
        self._resumed_history: dict[str, list[list[float]]] = {}

    def register_hooks(self, hooks: Iterable[HookBase | None]) -> None:
        """Append hooks; they run in registration order.

        Args:
            hooks: hooks to append; None entries are skipped.
        """
        for hook in hooks:
            if hook is None:
                continue
            # A weak proxy: the trainer owns the hooks, not the other way round.
            hook.trainer = weakref.proxy(self)
            self._hooks.append(hook)

    @property
    def hooks(self) -> list[HookBase]:
        """The registered hooks, in the order they run (a copy)."""
        return list(self._hooks)

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter .. max_iter - 1`` with the hooks around them.

        Args:
            start_iter: the first iteration (that of a resumed checkpoint, or 0).
            max_iter: one past the last iteration.

        Raises:
            BaseException: whatever a step or a hook raised, after ``after_train`` has run.
        """
        logger.info("Starting training from iteration %d of %d", start_iter, max_iter)
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        self.failed = False
        with EventStorage(start_iter) as self.storage:
            self.storage.restore_history(self._resumed_history)
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                # After the loop ``iter`` is max_iter, so that after_train sees a finished run
                # (also when there was nothing left to train: not one past where it stopped).
                self.iter = max(start_iter, max_iter)
            except BaseException as err:
                self.failed = True
                if isinstance(err, Exception):
                    logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()

    def before_train(self) -> None:
        """Run every hook's ``before_train``."""
        for hook in self._hooks:
            hook.before_train()

    def after_train(self) -> None:
        """Run every hook's ``after_train``, with the storage at the last iteration."""
        self.storage.iter = self.iter
        for hook in self._hooks:
            hook.after_train()

    def before_step(self) -> None:
        """Run every hook's ``before_step``, with the storage at this iteration."""
        self.storage.iter = self.iter
        for hook in self._hooks:
            hook.before_step()

    def after_backward(self) -> None:
        """Run every hook's ``after_backward`` (subclasses call it from :meth:`run_step`)."""
        for hook in self._hooks:
            hook.after_backward()

    def after_step(self) -> None:
        """Run every hook's ``after_step``."""
        for hook in self._hooks:
            hook.after_step()

    def run_step(self) -> None:
        """One iteration; subclasses implement it."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The trainer's state for a checkpoint.

        Returns:
            ``iteration``, the non-empty ``hooks`` states by class name and, once training has
            started, the ``history`` of the smoothed scalars.
        """
        hooks = {}
        for hook in self._hooks:
            state = hook.state_dict()
            if state:
                hooks[type(hook).__qualname__] = state
        state = {"iteration": self.iter, "hooks": hooks}
        storage = getattr(self, "storage", None)
        if storage is not None:
            # The writers' medians over the last iterations (losses in metrics.json, the
            # console, TensorBoard) continue in a resumed run as in an uninterrupted one.
            state["history"] = storage.recent_history()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; a hook state without its hook is skipped
        with a warning.

        Args:
            state: a trainer state from a checkpoint.
        """
        self.iter = state["iteration"]
        self._resumed_history = state.get("history", {})
        for name, hook_state in state.get("hooks", {}).items():
            for hook in self._hooks:
                if type(hook).__qualname__ == name:
                    hook.load_state_dict(hook_state)
                    break
            else:
                logger.warning("Cannot find a hook %s to restore its state", name)


def autocast_dtype(name: str, device_type: str) -> torch.dtype:
    """The autocast dtype that ``SOLVER.AMP.DTYPE`` names on ``device_type``.

    ``"auto"`` is float16 on a GPU and bfloat16 elsewhere. On one H200 a FIMA I3D step (16x224²,
    8 clips) ran 1.27-1.33x faster in float16 than in bfloat16, side by side in three runs, and
    bfloat16 ran slower than float32 (TF32). Most of the difference is BatchNorm, which PyTorch
    sends to cuDNN in float16 (4.3 ms of forward) and to its own kernels in bfloat16 (22.2 ms
    plus 16.4 ms of reductions), of 103 against 134 ms of GPU time (BENCHMARKS.md, "Second
    lease"). float16 is also the only half precision of GPUs before Ampere; on a CPU, fima's
    float16 is refused (its gradient scaler is CUDA-only) and bfloat16 is native with AMX or
    AVX512-BF16.

    Args:
        name: ``"auto"``, ``"bfloat16"`` or ``"float16"``.
        device_type: ``"cpu"``, ``"cuda"``, ...

    Returns:
        ``torch.bfloat16`` or ``torch.float16``.
    """
    if name == "auto":
        name = "float16" if device_type == "cuda" else "bfloat16"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def amp_dtype_name(amp: CfgNode, device_type: str) -> str:
    """``SOLVER.AMP.DTYPE`` as it resolves on ``device_type``.

    Args:
        amp: the ``SOLVER.AMP`` section.
        device_type: ``"cpu"``, ``"cuda"``, ...

    Returns:
        ``"bfloat16"`` or ``"float16"``.
    """
    return str(autocast_dtype(amp.DTYPE, device_type)).removeprefix("torch.")


def native_autocast(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``device_type`` computes in ``dtype`` in hardware.

    A CPU without AVX512-BF16 or AMX (oneDNN's bfloat16 check) emulates bfloat16 convolutions
    and matmuls: a Tiny3D training step ran 4-7x slower than in float32 on a 2-core AMD EPYC
    (Zen 3). float16 autocast exists only on GPUs here (``SimpleTrainer`` rejects it on a CPU).

    Args:
        device_type: ``"cpu"``, ``"cuda"``, ...
        dtype: the autocast dtype.

    Returns:
        True where it is native (always on device types other than CPU and CUDA).
    """
    if device_type == "cpu":
        return dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if device_type == "cuda":
        return dtype == torch.float16 or torch.cuda.is_bf16_supported()
    return True


def resolve_amp(amp: CfgNode, device_type: str) -> tuple[bool, torch.dtype]:
    """``SOLVER.AMP`` as it applies on ``device_type``.

    Off, with one warning per process, where ``AMP.DTYPE`` would be emulated
    (:func:`native_autocast`): mixed precision is there to make steps faster, and the float32
    run computes the same losses.

    Args:
        amp: the ``SOLVER.AMP`` section.
        device_type: ``"cpu"``, ``"cuda"``, ...

    Returns:
        ``(enabled, dtype)``: whether autocast runs, and the dtype ``AMP.DTYPE`` names.
    """
    dtype = autocast_dtype(amp.DTYPE, device_type)
    if not amp.ENABLED or native_autocast(device_type, dtype):
        return bool(amp.ENABLED), dtype
    log_once(
        logger,
        logging.WARNING,
        ("emulated autocast", device_type, dtype),
        "SOLVER.AMP: this %s has no native %s (no AVX512-BF16/AMX on a CPU); emulated it is "
        "several times slower than float32, so this run computes in float32",
        device_type,
        dtype,
    )
    return False, dtype


def describe_amp(amp: CfgNode, device_type: str) -> str:
    """What a run with ``SOLVER.AMP`` computes in on ``device_type`` (:func:`resolve_amp`), for
    a report. Runs in either precision from one seed follow different trajectories, so their
    figures differ within the seed noise.

    Args:
        amp: the ``SOLVER.AMP`` section.
        device_type: ``"cpu"``, ``"cuda"``, ...

    Returns:
        ``"bfloat16 autocast"``, ``"float32"``, or ``"float32 (bfloat16 would be emulated on
        this cpu)"`` (float16 alike).
    """
    enabled, _ = resolve_amp(amp, device_type)
    name = amp_dtype_name(amp, device_type)
    if enabled:
        return f"{name} autocast"
    if amp.ENABLED:
        return f"float32 ({name} would be emulated on this {device_type})"
    return "float32"


class SimpleTrainer(TrainerBase):
    """One optimizer step per iteration for a model that returns a dict of losses.

    Args:
        model: returns ``dict[str, Tensor]`` of losses in training mode.
        data_loader: an endless iterable of batches.
        optimizer: a torch optimizer.
        amp: autocast the forward to ``amp_dtype`` (losses inside the model opt out and stay in
            float32); float16 adds a gradient scaler.
        amp_dtype: ``torch.bfloat16`` (CPU or GPU) or ``torch.float16`` (GPU only).
        accum_steps: micro-batches per optimizer step; the loss of each is divided by it, so the
            gradients are those of their mean. Under DDP the gradients are synchronised only on
            the last one. Hooks run once per optimizer step (an iteration), whatever the count.
        device_type: ``"cpu"`` or ``"cuda"``, for autocast and the scaler.

    Raises:
        ValueError: float16 mixed precision on a device other than CUDA.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable[Any],
        optimizer: torch.optim.Optimizer,
        *,
        amp: bool = False,
        amp_dtype: torch.dtype = torch.bfloat16,
        accum_steps: int = 1,
        device_type: str = "cpu",
    ) -> None:
        super().__init__()
        if amp and amp_dtype == torch.float16 and device_type != "cuda":
            raise ValueError(
                "float16 mixed precision needs a GPU (its gradient scaler is CUDA-only); "
                "use bfloat16 on the CPU"
            )
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter_obj: Iterator[Any] | None = None
        self.optimizer = optimizer
        self.amp = amp
        self.amp_dtype = amp_dtype
        self.accum_steps = accum_steps
        self.device_type = device_type
        self.grad_scaler = torch.amp.GradScaler(
            device_type, enabled=amp and amp_dtype == torch.float16
        )
        self.loss_dict: dict[str, float] = {}

    def autocast(self) -> torch.autocast:
        """The forward's mixed precision: also for extra passes over the model (precise
        BatchNorm, the train benchmark's encoder replay), so that they compute as a step does.

        Returns:
            A fresh ``torch.autocast`` context, disabled when mixed precision is off.
        """
        return torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp)

    @property
    def _data_loader_iter(self) -> Iterator[Any]:
        # Created on first use, after a resume has restored the loader's position.
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def run_step(self) -> None:
        """One optimizer step over ``accum_steps`` micro-batches; the mean losses go to
        ``loss_dict`` and, averaged over ranks, to the event storage (a collective)."""
        assert self.model.training, "SimpleTrainer: the model was switched to eval mode"
        self.optimizer.zero_grad(set_to_none=True)
        data_time = 0.0
        totals: dict[str, torch.Tensor] = {}
        for micro in range(self.accum_steps):
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time += time.perf_counter() - start
            last = micro == self.accum_steps - 1
            sync = (
                contextlib.nullcontext()
                if last or not isinstance(self.model, nn.parallel.DistributedDataParallel)
                else self.model.no_sync()
            )
            with sync:
                with self.autocast():
                    loss_dict = self.model(data)
                losses = sum(loss_dict.values())
                self.grad_scaler.scale(losses / self.accum_steps).backward()
            for name, value in loss_dict.items():
                totals[name] = totals.get(name, 0) + value.detach() / self.accum_steps
        self.loss_dict = {name: float(value) for name, value in totals.items()}
        self.after_backward()
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self._write_metrics(self.loss_dict, data_time)

    def _write_metrics(self, loss_dict: Mapping[str, float], data_time: float) -> None:
        """Put losses and data time, averaged over ranks, into the storage."""
        metrics = comm.reduce_dict_mean({**loss_dict, "data_time": data_time})
        storage = get_event_storage()
        storage.put_scalar("data_time", metrics.pop("data_time"))
        storage.put_scalar("total_loss", sum(metrics.values()))
        storage.put_scalars(**metrics)

    def state_dict(self) -> dict[str, Any]:
        """:meth:`TrainerBase.state_dict` with the optimizer's (and its type) and the scaler's.

        Returns:
            The trainer's state for a checkpoint.
        """
        state = super().state_dict()
        state["optimizer"] = self.optimizer.state_dict()
        state["optimizer_type"] = type(self.optimizer).__name__
        state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the iteration, the hooks', optimizer's and scaler's states.

        The optimizer's hyperparameters (weight decay, momentum, betas, ...) stay those this
        trainer's optimizer was built with, from the config; where they differ from the
        checkpoint's, a warning names them. The learning rate is the scheduler's business.

        Args:
            state: a trainer state from a checkpoint (:meth:`state_dict`).

        Raises:
            ConfigError: the checkpoint was trained with another optimizer type.
        """
        saved_type = state.get("optimizer_type", type(self.optimizer).__name__)
        if saved_type != type(self.optimizer).__name__:
            raise ConfigError(
                f"The checkpoint was trained with {saved_type} and this run builds "
                f"{type(self.optimizer).__name__} (SOLVER.OPTIMIZER): resume with {saved_type}, "
                "or start a new run (another OUTPUT_DIR) from its weights with MODEL.WEIGHTS"
            )
        super().load_state_dict(state)
        configured = [dict(group) for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        changed = set()
        for group, own in zip(self.optimizer.param_groups, configured, strict=True):
            for key, value in own.items():
                if key not in ("params", "lr", "initial_lr") and group.get(key) != value:
                    changed.add(f"{key} {group.get(key)!r} -> {value!r}")
                    group[key] = value
        if changed:
            logger.warning(
                "Resuming with the config's optimizer settings instead of the checkpoint's: %s",
                ", ".join(sorted(changed)),
            )
        scaler_state = state.get("grad_scaler") or {}
        if self.grad_scaler.is_enabled() and not scaler_state:
            # Saved without loss scaling (bfloat16 or float32): a checkpoint of a CPU run, whose
            # "auto" precision is bfloat16, resumed on a GPU, where it is float16.
            logger.warning(
                "The checkpoint was trained without float16 loss scaling; the gradient scaler "
                "starts at its initial scale"
            )
            return
        self.grad_scaler.load_state_dict(scaler_state)
