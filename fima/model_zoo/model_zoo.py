"""The model zoo: the configs shipped with fima and the checkpoints published for them.

Configs are found with ``importlib.resources`` (inside an installed wheel they live in
``fima/model_zoo/configs``; in a checkout, in the top-level ``configs/``). Checkpoints are listed in
one table, config path -> file (relative to the release base URL) and sha256, and fetched through
fima's own iopath ``PathManager`` under the ``fima://`` prefix: ``fima://<file>`` is
``$FIMA_MODEL_ZOO_URL/<file>``, downloaded once into ``$FIMA_CACHE/model_zoo/<file>`` and
sha256-verified before every use (:mod:`fima.model_zoo.download`). Plain ``http(s)://`` URLs are
downloaded once into ``$FIMA_CACHE/urls/<sha256 of the URL>/<file name>``, so that two servers'
files of the same path never share a cache entry.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from iopath.common.file_io import PathHandler
from iopath.common.file_io import PathManager as PathManagerBase
from torch import nn

from fima import __version__
from fima.config import CfgNode, get_cfg
from fima.model_zoo.download import download_cached, download_verified
from fima.utils.env import cache_root

PREFIX = "fima://"
# Where the release files are published; FIMA_MODEL_ZOO_URL overrides it (a mirror, a local
# server). MODEL_ZOO.md lists which configs have a file there.
DEFAULT_BASE_URL = f"https://github.com/fima-project/fima/releases/download/v{__version__}"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Characters kept in the file name of a cached URL; others become "_".
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class ZooCheckpoint:
    """A published checkpoint: its file relative to the base URL and its sha256."""

    file: str
    sha256: str


# The one table: config path (relative to configs/) -> its trained checkpoint. An entry is added
# when its file is published with a release (MODEL_ZOO.md says how); no file is published yet.
# Mirrors and labs serving their own files add entries with register_checkpoint().
_CHECKPOINTS: dict[str, ZooCheckpoint] = {}


def _checkout_configs() -> Path:
    return Path(__file__).resolve().parents[2] / "configs"


def configs_root() -> Path:
    """The folder holding the shipped configs: the wheel's ``fima/model_zoo/configs`` when fima is
    installed from a wheel, else the checkout's ``configs/``."""
    packaged = importlib.resources.files("fima.model_zoo").joinpath("configs")
    if packaged.is_dir():
        return Path(str(packaged))
    return _checkout_configs()


def available_configs() -> list[str]:
    """Every shipped config path, e.g. ``"FIMA/i3d_ucf101_pretrain.yaml"``, sorted."""
    root = configs_root()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))


def get_config_file(config_path: str) -> str:
    """The local file of a shipped config.

    Args:
        config_path: relative to ``configs/``, e.g. ``"Quickstart/fima_synthetic.yaml"``.

    Raises:
        FileNotFoundError: no such config; the message lists the available ones.
    """
    path = configs_root() / config_path
    if not path.is_file() or path.suffix != ".yaml":
        raise FileNotFoundError(
            f"{config_path!r} is not a config of the model zoo; available: "
            + ", ".join(available_configs())
        )
    return str(path)


def register_checkpoint(config_path: str, file: str, sha256: str) -> None:
    """Add a checkpoint to the table: the trained weights of ``config_path``.

    Args:
        config_path: a shipped config (see :func:`available_configs`).
        file: the file relative to the base URL (``$FIMA_MODEL_ZOO_URL``).
        sha256: its hex sha256 (``sha256sum FILE``; ``tools/convert_checkpoint.py`` prints it).

    Raises:
        FileNotFoundError: ``config_path`` is not a shipped config.
        ValueError: ``sha256`` is not 64 hex digits, ``file`` is not a relative path, or the
            config or file already has a different entry.
    """
    get_config_file(config_path)
    sha256 = sha256.lower()
    if not _SHA256.match(sha256):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if file.startswith("/") or "://" in file or ".." in file.split("/"):
        raise ValueError(f"file must be a path relative to the base URL, got {file!r}")
    entry = ZooCheckpoint(file, sha256)
    for config, known in _CHECKPOINTS.items():
        if (config == config_path or known.file == file) and known != entry:
            raise ValueError(
                f"{config_path!r} / {file!r} conflicts with the entry {config}: {known}"
            )
    _CHECKPOINTS[config_path] = entry


def _checkpoint(config_path: str) -> ZooCheckpoint:
    get_config_file(config_path)
    entry = _CHECKPOINTS.get(config_path)
    if entry is None:
        trained = ", ".join(trained_configs()) or "none yet (see MODEL_ZOO.md)"
        raise FileNotFoundError(
            f"The model zoo has no trained checkpoint for {config_path!r}. Configs with one: "
            f"{trained}"
        )
    return entry


def trained_weights(config_path: str) -> str | None:
    """``fima://<file>`` of ``config_path``'s published checkpoint, or None when it has none (or
    is not a config); lets ``MODEL.WEIGHTS`` name a model-zoo config."""
    entry = _CHECKPOINTS.get(config_path)
    return None if entry is None else PREFIX + entry.file


def trained_configs() -> list[str]:
    """The configs that have a published checkpoint, sorted."""
    return sorted(_CHECKPOINTS)


def base_url() -> str:
    """``$FIMA_MODEL_ZOO_URL`` or the release URL, without a trailing slash."""
    return (os.environ.get("FIMA_MODEL_ZOO_URL") or DEFAULT_BASE_URL).rstrip("/")


def cache_dir() -> str:
    """Where model-zoo downloads are kept: ``$FIMA_CACHE/model_zoo``."""
    return os.path.join(cache_root(), "model_zoo")


def url_cache_path(url: str) -> str:
    """Where the download of a plain URL is kept: ``$FIMA_CACHE/urls/<sha256 of the whole URL>/
    <its file name>``; the hash keeps the files of two servers (or queries) apart, the name
    tells a reader what the file is."""
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    name = _UNSAFE_NAME.sub("_", name).lstrip(".") or "download"
    return os.path.join(cache_root(), "urls", hashlib.sha256(url.encode()).hexdigest(), name)


def get_checkpoint_url(config_path: str) -> str:
    """The download URL of ``config_path``'s trained checkpoint.

    Raises:
        FileNotFoundError: the config does not exist or has no published checkpoint (the message
            lists the configs that have one).
    """
    return f"{base_url()}/{_checkpoint(config_path).file}"


def get_config(config_path: str, trained: bool = False) -> CfgNode:
    """The full config of a shipped config file.

    Args:
        config_path: relative to ``configs/``.
        trained: set ``MODEL.WEIGHTS`` to the config's checkpoint (``fima://<file>``), which
            loading fetches and verifies.
    """
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(config_path))
    if trained:
        cfg.MODEL.WEIGHTS = PREFIX + _checkpoint(config_path).file
    return cfg


def get(
    config_path: str, trained: bool = False, device: str | torch.device | None = None
) -> nn.Module:
    """Build the model of a shipped config, in eval mode.

    Args:
        config_path: relative to ``configs/``, e.g. ``"FIMA/i3d_ucf101_pretrain.yaml"``.
        trained: load the config's published checkpoint (downloaded once, sha256-verified,
            loaded with ``weights_only=True``; it must match the model exactly).
        device: where the model goes; default ``MODEL.DEVICE`` (``auto``: a GPU if there is one).

    Raises:
        FileNotFoundError: no such config, or ``trained`` and it has no published checkpoint.
        fima.model_zoo.download.DownloadError: the checkpoint cannot be fetched or verified.
        fima.checkpoint.CheckpointMismatchError: the checkpoint does not fit the model.
    """
    from fima.checkpoint import load_checkpoint_file, load_model_state
    from fima.engine.defaults import resolve_device
    from fima.modeling import build_model

    cfg = get_config(config_path, trained=trained)
    if device is not None:
        cfg.MODEL.DEVICE = str(device)
    model = build_model(cfg)
    if trained:
        checkpoint = load_checkpoint_file(PathManager.get_local_path(cfg.MODEL.WEIGHTS))
        load_model_state(model, checkpoint["model"], cfg.MODEL.WEIGHTS, exact=True)
    return model.to(resolve_device(cfg)).eval()


class _DownloadHandler(PathHandler):
    """A handler whose files are downloads: read-only local copies."""

    def _open(self, path: str, mode: str = "r", buffering: int = -1, **kwargs: Any) -> Any:
        if "w" in mode or "a" in mode or "+" in mode:
            raise ValueError(f"{path} is read-only (mode {mode!r})")
        return open(self._get_local_path(path, **kwargs), mode, buffering=buffering)


class ModelZooHandler(_DownloadHandler):
    """iopath handler of ``fima://<file>``: the verified local copy of a file in the table."""

    def _get_supported_prefixes(self) -> list[str]:
        return [PREFIX]

    def _get_local_path(self, path: str, force: bool = False, **kwargs: Any) -> str:
        self._check_kwargs(kwargs)
        file = path[len(PREFIX) :]
        known = {entry.file: entry for entry in _CHECKPOINTS.values()}
        problem = zoo_file_problem(path)
        if problem is not None:
            raise FileNotFoundError(problem)
        return download_verified(
            f"{base_url()}/{file}", os.path.join(cache_dir(), *file.split("/")), known[file].sha256
        )


def zoo_file_problem(path: str) -> str | None:
    """Why ``fima://<file>`` cannot be fetched (no sha256 is registered for it), or None."""
    file = path[len(PREFIX) :]
    known = sorted(entry.file for entry in _CHECKPOINTS.values())
    if file in known:
        return None
    return f"{path} is not a file of the model zoo, so its sha256 is unknown; known files: " + (
        ", ".join(PREFIX + f for f in known) or "none yet (see MODEL_ZOO.md)"
    )


class URLHandler(_DownloadHandler):
    """iopath handler of ``http(s)://`` URLs: the file downloaded once (atomically) into
    :func:`url_cache_path`. iopath's own handler caches by the URL's path alone, without its
    host, so another server's file of the same path would be returned; this one does not."""

    def _get_supported_prefixes(self) -> list[str]:
        return ["http://", "https://"]

    def _get_local_path(self, path: str, force: bool = False, **kwargs: Any) -> str:
        self._check_kwargs(kwargs)
        return download_cached(path, url_cache_path(path), force=force)


def _path_manager() -> PathManagerBase:
    manager = PathManagerBase()
    manager.register_handler(URLHandler())
    manager.register_handler(ModelZooHandler())
    return manager


# fima's own PathManager (iopath's global one stays untouched): local paths, http(s):// URLs
# (downloaded once into $FIMA_CACHE/urls, unverified) and fima:// model-zoo files (verified).
PathManager = _path_manager()


def has_url_handler(name: str) -> bool:
    """Whether fima's ``PathManager`` fetches ``name``: an ``http(s)://`` or ``fima://`` URL, or
    one of a prefix whose handler a user registered (``PathManager.register_handler``)."""
    # iopath lists the registered prefixes only in this attribute.
    return any(name.startswith(prefix) for prefix in PathManager._path_handlers)
