"""A registry whose unknown-name error lists what is registered (fvcore's does not)."""

from __future__ import annotations

from typing import Any

from fvcore.common.registry import Registry as _FvcoreRegistry


class Registry(_FvcoreRegistry):
    """fvcore's ``Registry`` with a helpful error for a name that was never registered.

    Entries register under their ``__name__`` with ``@REGISTRY.register()``; a user module that
    does so before the model is built (``--import my_module`` in ``tools/train_net.py``) extends
    fima without editing it.
    """

    def get(self, name: str) -> Any:
        """The object registered as ``name``.

        Args:
            name: the registered name (the class's or function's ``__name__``).

        Returns:
            The registered class or function.

        Raises:
            KeyError: nothing is registered as ``name``; the message lists what is.
        """
        if name not in self:
            known = ", ".join(sorted(self.names())) or "(none)"
            raise KeyError(
                f"No {self._name.lower()} named {name!r}. Registered: {known}. A class of your own "
                f"must be registered with @{self._name}_REGISTRY.register() and its module "
                "imported first (tools/train_net.py --import your_module)."
            )
        return super().get(name)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return [name for name, _ in self]
