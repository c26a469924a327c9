"""Checkpoint conversion: reference FIMA/FAME/MoCo and torchvision layouts into fima's layouts.

Sources (``--from``):

- ``fima-reference``, ``fame-reference``, ``moco-reference``: the reference code bases (FIMA
  builds on FAME, which builds on MoCo; they share one layout). A training checkpoint is
  ``{"state_dict": {"module.encoder_q.<backbone>", "module.encoder_q.id_head.*" / "fc.*"
  (projection head), "module.encoder_k.*", "module.queue", "module.queue_ptr", ...}}``; a
  fine-tuned classifier is ``{"state_dict": {"module.<backbone>", "module.fc.*"}}``. The I3D
  uses FAME's names (``conv3d_1a_7x7.conv3d``/``.batch3d``, ``mixed_3b.branch_1.0``, ...),
  renamed here to fima's (``conv_1a.conv``/``.bn``, ``mixed_3b.b1a``, ...); R(2+1)D-18 uses
  torchvision's names, which fima's backbones share.
- ``torchvision``: a ``torchvision.models.video.r2plus1d_18`` / ``r3d_18`` state dict.
- ``fima``: a checkpoint of this project (pretraining, classifier or bare backbone).

Targets (``--to``): ``backbone``, a plain backbone ``state_dict`` that ``MODEL.WEIGHTS`` loads
into a classifier; ``classifier``, a fima ``VideoClassifier`` checkpoint (``backbone.*`` and
``head.fc.*``), which needs a trained classifier in the source.

Every backbone key is checked against the fima backbone (names and shapes). A conversion that
would lose part of the target (a backbone key missing, left over or of another shape; no classifier
head for ``classifier``) is refused unless ``allow_lossy``. Parts outside the target (key encoder,
queues, projection heads, decoder; a classifier head when exporting a backbone) are dropped and
reported.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fima.checkpoint.checkpointer import read_checkpoint
from fima.config import CfgNode, get_cfg

logger = logging.getLogger(__name__)

REFERENCE_SOURCES = ("fima-reference", "fame-reference", "moco-reference")
SOURCES = (*REFERENCE_SOURCES, "torchvision", "fima")
TARGETS = ("backbone", "classifier")

# FAME's I3D (backbone/i3d.py, also FIMA's) -> fima's I3D, applied in order. The reference's
# branch_3.0 is the max pool (no weights).
_REFERENCE_I3D_RULES = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^conv3d_1a_7x7\.", "conv_1a."),
        (r"^conv3d_2b_1x1\.", "conv_2b."),
        (r"^conv3d_2c_3x3\.", "conv_2c."),
        (r"\.branch_0\.", ".b0."),
        (r"\.branch_1\.0\.", ".b1a."),
        (r"\.branch_1\.1\.", ".b1b."),
        (r"\.branch_2\.0\.", ".b2a."),
        (r"\.branch_2\.1\.", ".b2b."),
        (r"\.branch_3\.1\.", ".b3b."),
        (r"\.conv3d\.", ".conv."),
        (r"\.batch3d\.", ".bn."),
    )
)


class LossyConversionError(ValueError):
    """A conversion that would lose part of the target; the message is the full report."""


@dataclass
class ConversionReport:
    """What a conversion mapped, dropped, filled, and what it could not map.

    Attributes:
        source, target: the layouts converted from and to.
        backbone: the fima backbone the weights were checked against.
        mapped: target key -> source key, for every tensor written.
        dropped: parts outside the target, name -> number of tensors.
        filled: target keys absent from the source that were given their initial value
            (BatchNorm's ``num_batches_tracked`` counters only).
        missing: target keys the source lacks.
        unexpected: source backbone keys with no place in the target.
        shapes: ``key: source shape vs target shape`` for mismatching tensors.
        notes: further remarks (e.g. a classifier head dropped on purpose).
    """

    source: str
    target: str
    backbone: str
    mapped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    filled: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def lossy(self) -> bool:
        """Whether the conversion loses part of the target (missing, unexpected or misshapen
        keys)."""
        return bool(self.missing or self.unexpected or self.shapes)

    def format(self, verbose: bool = False) -> str:
        """The report as text.

        Args:
            verbose: list every mapped key, not only their count.

        Returns:
            Lines joined by newlines, without a trailing newline.
        """
        renamed = [(s, t) for t, s in self.mapped.items() if s != t]
        lines = [
            f"Conversion {self.source} -> {self.target} ({self.backbone})",
            f"  mapped: {len(self.mapped)} tensors ({len(renamed)} renamed"
            + (f", e.g. {renamed[0][0]} -> {renamed[0][1]})" if renamed else ")"),
        ]
        if verbose:
            lines += [f"    {s} -> {t}" for t, s in self.mapped.items()]
        for title, items in (
            ("filled with initial values", self.filled),
            ("MISSING (target keys the source lacks)", self.missing),
            ("UNEXPECTED (source keys with no place in the target)", self.unexpected),
            ("SHAPE MISMATCH", self.shapes),
        ):
            if items:
                lines.append(f"  {title}: {len(items)}")
                lines += [f"    {item}" for item in items]
        dropped = ", ".join(f"{name} ({count})" for name, count in self.dropped.items())
        lines.append(f"  dropped (not part of the target): {dropped or 'nothing'}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def load_source(path: str) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``).

    Args:
        path: the checkpoint file.

    Returns:
        The checkpoint's top-level dict (on the CPU), as :func:`convert_checkpoint` takes it.

    Raises:
        FileNotFoundError: there is no such file.
        fima.checkpoint.CheckpointReadError: a ``ValueError`` whose one-line message names the
            file and why it cannot be read (a directory, not a ``torch.save`` file, truncated,
            objects that would need code to run, not a dict).
    """
    return read_checkpoint(path)


def reference_state(checkpoint: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The model state of a checkpoint in the reference code bases' layout.

    Args:
        checkpoint: a loaded checkpoint.

    Returns:
        Its ``state_dict`` entry for the layout ``{"state_dict": {...}, "epoch": ..., ...}``
        (keys usually under DDP's ``module.``), or None for any other layout.
    """
    state = checkpoint.get("state_dict")
    return state if isinstance(state, Mapping) else None


def _tensors(checkpoint: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The model state of a checkpoint, without DDP's ``module.`` prefix."""
    state: Any = reference_state(checkpoint)
    if state is None:
        state = checkpoint["model"] if isinstance(checkpoint.get("model"), Mapping) else checkpoint
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"The {source} checkpoint holds no tensors (keys: {sorted(state)[:10]})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _split(
    state: dict[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Counter, list[str]]:
    """``(backbone, classifier head, dropped parts, notes)`` of a source state.

    The head's keys are relative to the head (``fc.weight``); the backbone's are the source's
    names, still to be renamed.
    """
    dropped: Counter = Counter()
    notes: list[str] = []
    if source == "fima":
        prefix = next((p for p in ("encoder_q.", "backbone.") if any(map(_starts(p), state))), "")
        backbone = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        head = {}
        if prefix == "backbone.":
            head = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
        for key in state:
            if not key.startswith(prefix) and not (head and key.startswith("head.")):
                dropped[key.split(".", 1)[0]] += 1
        return backbone, head, dropped, notes
    encoder = state
    pretraining = source in REFERENCE_SOURCES and any(map(_starts("encoder_q."), state))
    if pretraining:
        encoder = {
            k[len("encoder_q.") :]: v for k, v in state.items() if k.startswith("encoder_q.")
        }
        for key in state:
            if not key.startswith("encoder_q."):
                dropped[key.split(".", 1)[0]] += 1
    backbone, head = {}, {}
    for key, value in encoder.items():
        top = key.split(".", 1)[0]
        if pretraining and top in ("fc", "id_head"):
            dropped[f"encoder_q.{top} (projection head)"] += 1
        elif not pretraining and top == "fc":
            head[key] = value
        else:
            backbone[key] = value
    if pretraining:
        notes.append("a pretraining checkpoint: the query encoder is the backbone")
    return backbone, head, dropped, notes


def _starts(prefix: str) -> Callable[[str], bool]:
    return lambda key: key.startswith(prefix)


def detect_backbone(keys: set[str]) -> str:
    """The fima backbone whose weights a checkpoint holds, from its key names.

    Args:
        keys: the source's backbone keys (reference or fima names).

    Returns:
        ``"I3D"``, ``"R2Plus1D18"`` or ``"R3D18"``.

    Raises:
        ValueError: no known layout; pass a config (``--config-file``) naming the backbone.
    """
    if "conv3d_1a_7x7.conv3d.weight" in keys or "conv_1a.conv.weight" in keys:
        return "I3D"
    if "stem.3.weight" in keys:
        return "R2Plus1D18"
    if "stem.0.weight" in keys and "layer4.1.conv2.0.weight" in keys:
        return "R3D18"
    raise ValueError(
        "Cannot tell the backbone from the checkpoint's keys (e.g. "
        + ", ".join(sorted(keys)[:5])
        + "); pass --config-file with the config whose MODEL.BACKBONE it is"
    )


def _rename(key: str, source: str) -> str:
    if source in REFERENCE_SOURCES:
        for pattern, replacement in _REFERENCE_I3D_RULES:
            key = pattern.sub(replacement, key)
    return key


def _check_against(
    model: nn.Module,
    renamed: dict[str, tuple[str, torch.Tensor]],
    prefix: str,
    report: ConversionReport,
) -> dict[str, torch.Tensor]:
    """The tensors of ``renamed`` (target key -> source key, tensor) that fit ``model``; the
    rest goes to the report."""
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, (source_key, tensor) in renamed.items():
        if key not in own:
            report.unexpected.append(f"{source_key} (as {prefix}{key})")
        elif tensor.shape != own[key].shape:
            report.shapes.append(
                f"{prefix}{key}: source {tuple(tensor.shape)} vs target {tuple(own[key].shape)}"
            )
        else:
            out[prefix + key] = tensor
            report.mapped[prefix + key] = source_key
    for key in own:
        if key in renamed:
            continue
        if key.endswith("num_batches_tracked"):
            out[prefix + key] = own[key].clone()
            report.filled.append(prefix + key)
        else:
            report.missing.append(prefix + key)
    return out


def _source_hint(checkpoint: Mapping[str, Any], source: str) -> str:
    """What to try when nothing of ``checkpoint`` fits as read for ``source``."""
    if source not in REFERENCE_SOURCES and reference_state(checkpoint) is not None:
        return (
            "it is in the reference code's layout ({'state_dict': ...}): convert it with --from "
            + " / ".join(REFERENCE_SOURCES)
        )
    return (
        f"check --from (one of {', '.join(SOURCES)}), and give --config-file with the config "
        "whose MODEL.BACKBONE the checkpoint holds"
    )


def convert_checkpoint(
    checkpoint: Mapping[str, Any],
    source: str,
    target: str,
    cfg: CfgNode | None = None,
    allow_lossy: bool = False,
) -> tuple[dict[str, Any], ConversionReport]:
    """Convert a loaded checkpoint.

    Args:
        checkpoint: what :func:`load_source` returned.
        source: one of :data:`SOURCES`.
        target: one of :data:`TARGETS`.
        cfg: a config naming the backbone (``MODEL.BACKBONE``); default: detected from the keys
            (I3D, R2Plus1D18, R3D18) with default settings.
        allow_lossy: write what fits even when part of the target is lost.

    Returns:
        ``(output, report)``: for ``backbone`` a plain state dict; for ``classifier``
        ``{"model": state_dict}``.

    Raises:
        LossyConversionError: part of the target would be lost and ``allow_lossy`` is false.
        ValueError: an unknown source or target, or a checkpoint without tensors.
    """
    from fima.modeling.backbone import build_backbone

    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; one of {SOURCES}")
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}; one of {TARGETS}")
    backbone_state, head_state, dropped, notes = _split(_tensors(checkpoint, source), source)
    if cfg is None:
        cfg = get_cfg()
        cfg.MODEL.BACKBONE.NAME = detect_backbone(set(backbone_state))
    backbone = build_backbone(cfg)
    report = ConversionReport(source, target, cfg.MODEL.BACKBONE.NAME, notes=notes)
    renamed = {_rename(k, source): (k, v) for k, v in backbone_state.items()}
    prefix = "backbone." if target == "classifier" else ""
    out = _check_against(backbone, renamed, prefix, report)
    if not report.mapped:
        # Written with --allow-lossy, it would hold nothing but BatchNorm counters.
        raise ValueError(
            f"None of the {source} checkpoint's {len(renamed)} backbone tensors fits "
            f"{cfg.MODEL.BACKBONE.NAME} (its keys: {', '.join(sorted(backbone_state)[:3])}, ...); "
            + _source_hint(checkpoint, source)
        )
    head_keys = {f"head.{k}": (k, v) for k, v in head_state.items()}
    if target == "backbone":
        for key in head_state:
            dropped[f"classifier head {key.split('.', 1)[0]}"] += 1
        if head_state:
            report.notes.append(
                "the trained classifier head is dropped: a backbone export keeps the backbone only"
            )
    elif not head_state:
        report.missing += ["head.fc.weight", "head.fc.bias"]
        report.notes.append(
            "the source has no classifier head (a pretraining checkpoint?): convert it --to "
            "backbone and set MODEL.WEIGHTS to the result to initialise a classifier's backbone"
        )
    else:
        weight = head_state.get("fc.weight")
        expected = {"fc.weight", "fc.bias"}
        if set(head_state) != expected or weight is None or weight.dim() != 2:
            report.unexpected += sorted(set(head_state) - expected)
            report.missing += [f"head.{k}" for k in sorted(expected - set(head_state))]
        elif weight.shape[1] != backbone.out_channels:
            report.shapes.append(
                f"head.fc.weight: source {tuple(weight.shape)} vs target (N, "
                f"{backbone.out_channels})"
            )
        else:
            for key, (source_key, tensor) in head_keys.items():
                out[key] = tensor
                report.mapped[key] = source_key
            report.notes.append(
                f"classifier head: {weight.shape[0]} classes (set MODEL.CLASSIFIER.NUM_CLASSES "
                f"{weight.shape[0]})"
            )
    report.dropped = dict(sorted(dropped.items()))
    if report.lossy and not allow_lossy:
        raise LossyConversionError(
            report.format() + "\nRefused: this conversion loses part of the target (listed "
            "above); pass --allow-lossy to write what fits anyway"
        )
    return (out if target == "backbone" else {"model": out}), report
