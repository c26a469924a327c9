"""The head registry and ``build_head``."""

from __future__ import annotations

from torch import nn

from fima.config.config import CfgNode
from fima.utils.registry import Registry

HEAD_REGISTRY = Registry("HEAD")
HEAD_REGISTRY.__doc__ = """
Registry of heads: projection heads, the motion decoder, classifiers.

An entry is called as ``cls(cfg, in_channels)``, where ``in_channels`` is the backbone's
``out_channels``, and returns an ``nn.Module``. A head reads its sizes from its own config section.
"""


def build_head(name: str, cfg: CfgNode, in_channels: int) -> nn.Module:
    """Build the head registered as ``name`` for a backbone with ``in_channels`` channels.

    Args:
        name: a name in ``HEAD_REGISTRY`` (the value of a config key such as
            ``MODEL.PROJECTOR.NAME``).
        cfg: the finished config; the head reads its own section.
        in_channels: the backbone's ``out_channels``.

    Returns:
        The head.

    Raises:
        KeyError: no head of that name is registered (the message lists the known ones).
    """
    return HEAD_REGISTRY.get(name)(cfg, in_channels)


def require_head(key: str, name: str, methods: tuple[str, ...] = (), interface: str = "") -> None:
    """Start-up check of a config key that names a head: a misspelt or unimported head, or one
    of one's own without the methods its user calls besides ``forward``, is a one-line
    ``ConfigError`` naming ``key``, not a traceback from the model build or the first step.

    Args:
        key: the config key, for the message (``MODEL.PROJECTOR.NAME``).
        name: its value, the head's registered name.
        methods: what the caller calls on the head besides ``forward``.
        interface: what those methods must do, for the message.

    Raises:
        ConfigError: ``name`` is not registered (the message lists the known heads), or its
            class lacks one of ``methods``.
    """
    from fima.config.validation import ConfigError

    try:
        head = HEAD_REGISTRY.get(name)
    except KeyError as err:
        raise ConfigError(f"{key}: {err.args[0]}") from None
    missing = [method for method in methods if not callable(getattr(head, method, None))]
    if missing:
        raise ConfigError(
            f"{key}: {name} has no {' or '.join(f'{m}()' for m in missing)}; {interface}"
        )
