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

A head may say which config key it serves with a class attribute ``HEAD_KIND``
(:data:`HEAD_KINDS`: ``"projector"`` for ``MODEL.PROJECTOR.NAME``, ``"motion decoder"`` for
``MODEL.MOTION_DECODER.NAME``, ``"classifier"`` for ``MODEL.CLASSIFIER.HEAD``); a key naming a head
of another kind is then refused at start-up. A head without ``HEAD_KIND`` is taken on trust.
"""

# The config keys that name a head: the kind of head each takes, and a head of that kind fima ships.
HEAD_KINDS = {
    "MODEL.PROJECTOR.NAME": ("projector", "ProjectionHead"),
    "MODEL.MOTION_DECODER.NAME": ("motion decoder", "MotionDecoder"),
    "MODEL.CLASSIFIER.HEAD": ("classifier", "LinearClassifier"),
}


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
    """Start-up check of a config key that names a head: a misspelt or unimported head, one that
    declares another ``HEAD_KIND`` than ``key`` takes (a projection head as the classifier), or one
    of one's own without the methods its user calls besides ``forward``, is a one-line
    ``ConfigError`` naming ``key``, not a traceback from the model build or the first step.

    Args:
        key: the config key (``MODEL.PROJECTOR.NAME``): the message names it, and a key of
            :data:`HEAD_KINDS` takes heads of its kind.
        name: its value, the head's registered name.
        methods: what the caller calls on the head besides ``forward``.
        interface: what those methods must do, for the message.

    Raises:
        ConfigError: ``name`` is not registered (the message lists the known heads), is a head
            of another kind, or its class lacks one of ``methods``.
    """
    from fima.config.validation import ConfigError

    try:
        head = HEAD_REGISTRY.get(name)
    except KeyError as err:
        raise ConfigError(f"{key}: {err.args[0]}") from None
    declared = getattr(head, "HEAD_KIND", None)
    kind, example = HEAD_KINDS.get(key, (declared, ""))
    if declared is not None and declared != kind:
        raise ConfigError(
            f"{key}: {name} is a {declared} head, not a {kind} head; name a {kind} head, "
            f"e.g. {example}"
        )
    missing = [method for method in methods if not callable(getattr(head, method, None))]
    if missing:
        raise ConfigError(
            f"{key}: {name} has no {' or '.join(f'{m}()' for m in missing)}; {interface}"
        )
