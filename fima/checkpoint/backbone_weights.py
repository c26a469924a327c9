"""Backbone weights from a pretraining checkpoint: resolving ``MODEL.WEIGHTS``, mapping the query
encoder's keys onto a backbone, and checking that nothing is missing.

A fima pretraining checkpoint (MoCo, FIMA) holds ``{"model": state_dict, ...}`` with the query
encoder under ``encoder_q.*`` next to the key encoder, projectors, decoders and queues. Transfer
takes ``encoder_q.<name>`` as the backbone's ``<name>`` and ignores the rest (listed in the log).
A classifier checkpoint (``backbone.*``) and a bare backbone ``state_dict`` map the same way. The
load is strict: a backbone key that the checkpoint lacks, a checkpoint key that the backbone does
not have, or a shape that differs is an error naming the keys, never a silent partial load.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from fima.checkpoint.checkpointer import check_state, torch_file_problem
from fima.model_zoo.download import download_cached
from fima.model_zoo.model_zoo import (
    PREFIX,
    PathManager,
    has_url_handler,
    trained_configs,
    trained_weights,
    url_cache_path,
    zoo_file_problem,
)

logger = logging.getLogger(__name__)

# Where each layout keeps the backbone, most specific first: MoCo/FIMA's query encoder, then a
# fima classifier's backbone.
BACKBONE_PREFIXES = ("encoder_q.", "backbone.")


@dataclass
class BackboneLoadReport:
    """What :func:`load_backbone_weights` did.

    Attributes:
        prefix: the checkpoint prefix mapped onto the backbone (``""`` for a bare backbone).
        loaded: number of tensors loaded into the backbone.
        ignored: checkpoint entries outside the backbone, counted by their top-level name.
        missing: backbone keys absent from the checkpoint (empty after a successful load).
        unexpected: mapped checkpoint keys the backbone lacks (empty after a successful load).
    """

    prefix: str
    loaded: int
    ignored: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def _is_web_url(name: str) -> bool:
    return name.lower().startswith(("http://", "https://"))


# A URL's scheme (RFC 3986: a letter, then letters, digits, "+", "-", "."), so that a local path
# with "://" further on ("runs/a://b/model.pth") is not taken for a URL; two characters at least,
# as a Windows drive letter ("C://runs/model.pth") is one.
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")


def weights_problem(name: str) -> str | None:
    """Why ``MODEL.WEIGHTS`` ``name`` cannot name a checkpoint, or None when it can: an existing
    file, an ``http(s)://`` or ``fima://`` URL (or one whose prefix has a handler registered on
    ``fima.model_zoo.PathManager``), or a model-zoo config with a published checkpoint. Nothing
    is downloaded."""
    if os.path.isfile(os.path.expanduser(name)) or trained_weights(name):
        return None
    if name.startswith(PREFIX):
        return zoo_file_problem(name)
    if _is_web_url(name) or has_url_handler(name):
        return None
    url = _URL_SCHEME.match(name)
    if url is not None:
        # Another scheme would be taken for a local path and reported as a missing file.
        scheme = url.group(1)
        local = f" (a local file is given as its path: {name[len('file://') :]})"
        return (
            f"{name!r}: fima does not fetch {scheme}:// URLs"
            + (local if scheme.lower() == "file" else "")
            + "; pass the path of a local checkpoint, an http(s):// URL or a fima:// model-zoo "
            "file (download other URLs first, or register an iopath handler for them on "
            "fima.model_zoo.PathManager)"
        )
    return (
        f"{name!r} is neither an existing file nor a URL, nor a model-zoo config with a "
        "checkpoint (" + (", ".join(trained_configs()) or "none is published yet") + "). Pass "
        "the path of a fima checkpoint (e.g. output/quickstart_moco/model_final.pth), an "
        "http(s):// URL or a fima:// model-zoo file"
    )


def resolve_weights(name: str) -> str:
    """The local file of ``MODEL.WEIGHTS``: a path; a URL (``http(s)://``, downloaded once into
    ``$FIMA_CACHE/urls/`` under a hash of the whole URL, and only if it is a ``torch.save`` file;
    ``fima://``, a sha256-verified model-zoo download); or a model-zoo config name such as
    ``"FIMA/i3d_ucf101_pretrain.yaml"``, which means its published checkpoint.

    Raises:
        FileNotFoundError: ``name`` is none of these.
        fima.model_zoo.DownloadError: a download failed or did not verify.
    """
    path = os.path.expanduser(name)
    if os.path.isfile(path):
        return path
    if _is_web_url(name):
        # Only a torch.save file enters the cache: a web page or a response cut short without a
        # Content-Length would otherwise be kept and fail every later run the same way.
        return download_cached(name, url_cache_path(name), check=torch_file_problem)
    zoo = name if has_url_handler(name) else trained_weights(name)
    if zoo is not None:
        return PathManager.get_local_path(zoo)
    raise FileNotFoundError(f"MODEL.WEIGHTS {weights_problem(name)}")


def backbone_prefix(state: Mapping[str, torch.Tensor]) -> str:
    """The prefix under which ``state`` keeps a backbone (``""``: the state is a bare backbone)."""
    for prefix in BACKBONE_PREFIXES:
        if any(key.startswith(prefix) for key in state):
            return prefix
    return ""


def load_backbone_weights(
    backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> BackboneLoadReport:
    """Load the backbone part of a model ``state`` into ``backbone``, strictly.

    Args:
        backbone: the module to initialise.
        state: a model ``state_dict`` (pretraining, classifier or bare backbone layout).
        source: a name for the log and errors (the checkpoint path).

    Returns:
        The report (also logged): mapping, number of tensors, ignored entries.

    Raises:
        CheckpointMismatchError: a backbone key is missing, a mapped key is unexpected, or a
            shape differs; the message lists them.
    """
    prefix = backbone_prefix(state)
    mapped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    ignored = Counter(k.split(".", 1)[0] for k in state if not k.startswith(prefix))
    own = backbone.state_dict()
    report = BackboneLoadReport(
        prefix=prefix,
        loaded=0,
        ignored=dict(sorted(ignored.items())),
        missing=sorted(set(own) - set(mapped)),
        unexpected=sorted(set(mapped) - set(own)),
    )
    # The same strict check as resuming: missing, unexpected and mis-shaped keys, all listed.
    check_state(
        own,
        mapped,
        f"{source} (keys '{prefix}*' onto {type(backbone).__name__})",
        exact=True,
        advice="Was it made with another backbone config? Use the MODEL.BACKBONE settings it "
        "was trained with",
    )
    backbone.load_state_dict(mapped, strict=True)
    report.loaded = len(mapped)
    logger.info(
        "Backbone initialised from %s: %d tensors '%s*' -> %s (missing: none, unexpected: none); "
        "ignored: %s",
        source,
        report.loaded,
        prefix,
        type(backbone).__name__,
        ", ".join(f"{name} ({count})" for name, count in report.ignored.items()) or "nothing",
    )
    return report
