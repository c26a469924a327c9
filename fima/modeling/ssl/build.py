"""The SSL method registry, the ``SSLMethod`` base class and ``build_model``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fima.config.config import CfgNode
from fima.utils.registry import Registry

SSL_METHOD_REGISTRY = Registry("SSL_METHOD")
SSL_METHOD_REGISTRY.__doc__ = """
Registry of training methods (self-supervised methods and the supervised classifier).

An entry is called as ``cls(cfg)`` and returns an ``nn.Module`` whose ``forward(batch: dict)``
returns, in training mode, a ``dict[str, Tensor]`` of losses that the trainer sums. A method owns
what it needs beyond that, so the trainer never branches on its name:

- ``input_views(cfg)`` (classmethod): the views its training batches need;
- ``build_train_loader(cfg)`` (classmethod): its training data loader;
- ``build_hooks(cfg)``: its training hooks (momentum update, queue updates, monitors);
- ``build_evaluator(cfg)`` (optional): what ``--eval-only`` and the evaluation hook run (the
  kNN monitor is MoCo's: ``TEST.KNN.ENABLED`` with a method without one is a start-up error).
- ``transfer_weights(state, source, evaluation)`` (optional): take a ``MODEL.WEIGHTS``
  checkpoint of another layout in part (see :func:`fima.checkpoint.load_model_state`); without
  it, a checkpoint must hold every tensor of the method.
- ``validate_config(cfg, world_size)`` (classmethod, optional): start-up checks of its own
  keys, raising ``ConfigError`` (:func:`fima.config.validate_cfg` calls it).
- ``extract_features(clips)`` (optional): uint8 clips ``[N, 3, T, S, S]`` to features
  ``[N, C]``, which the kNN, retrieval and linear-probe evaluators read; with
  ``feature_state_dict()`` (optional) naming the tensors it reads (the retrieval cache's key;
  by default the whole ``state_dict()``).
- ``PRECISE_BN = True`` (class attribute, optional): its training forward changes nothing but
  BatchNorm statistics, so ``TEST.PRECISE_BN`` may run it on extra batches.
- ``encoder_q`` or ``backbone`` (attribute, optional): its backbone, which the pictures
  (``VIS_PERIOD``, ``tools/visualize.py``) draw and the transfer of its checkpoints (a
  classifier's ``MODEL.WEIGHTS``, ``tools/convert_checkpoint.py --to backbone``) reads; with
  ``VIS_PERIOD > 0`` a method without one is a start-up error.

Subclassing :class:`SSLMethod` provides the first three; without the optional ones a method
simply lacks what they add.
"""


class SSLMethod(nn.Module):
    """Base class of training methods, with the defaults of the registry contract."""

    @classmethod
    def input_views(cls, cfg: CfgNode) -> tuple[str, ...]:
        """The views a training batch carries (see ``fima.data.sampling``).

        Args:
            cfg: the finished config.

        Returns:
            View names; the default is ``("global",)``.
        """
        return ("global",)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        """Two random windows per video with :meth:`input_views` (pretraining).

        Args:
            cfg: the finished config.

        Returns:
            An endless iterable of batch dicts (``fima.data.build_pretrain_loader``).
        """
        from fima.data import build_pretrain_loader

        return build_pretrain_loader(cfg, cls.input_views(cfg))

    def build_hooks(self, cfg: CfgNode) -> list[Any]:
        """Hooks that this method needs during training, in the order they must run.

        Args:
            cfg: the finished config.

        Returns:
            ``HookBase`` instances; none by default.
        """
        return []

    @property
    def device(self) -> torch.device:
        """The device of the method's parameters (where its inputs must go)."""
        return next(self.parameters()).device


def build_model(cfg: CfgNode) -> nn.Module:
    """Build ``cfg.MODEL.META_ARCHITECTURE`` on the CPU, in training mode.

    Moving it to a device, converting BatchNorm and wrapping DDP are the trainer's business.

    Args:
        cfg: the finished config.

    Returns:
        The method, an ``nn.Module`` whose training ``forward(batch)`` returns its losses.

    Raises:
        KeyError: no method of that name is registered (the message lists the known ones).
    """
    return SSL_METHOD_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
