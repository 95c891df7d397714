"""Server-side strategies as plug-ins: one module per strategy, found through :func:`strategy_for`.

Every name in :class:`mfcpl.wire.schemas.Algorithm` has a strategy here and a client-side algorithm in
``client_sdk.algorithms``. Pure numpy, no I/O, no torch (docs/design.md contract 1).
"""

from __future__ import annotations

from collections.abc import Callable

from coordinator.strategies.base import RoundUpdates, Strategy

_REGISTRY: dict[str, type[Strategy]] = {}


def register(*names: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: ``cls`` aggregates the algorithms ``names``."""

    def decorate(cls: type[Strategy]) -> type[Strategy]:
        for name in names:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise ValueError(f"strategy {name!r} is registered twice ({_REGISTRY[name].__name__}, {cls.__name__})")
            _REGISTRY[name] = cls
        cls.name = names[0]
        return cls

    return decorate


def strategy_for(algorithm: str) -> Strategy:
    """The server-side strategy of ``algorithm``."""
    _load_builtins()
    try:
        return _REGISTRY[str(algorithm)]()
    except KeyError:
        raise ValueError(f"no server-side strategy for {algorithm!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def registered() -> dict[str, type[Strategy]]:
    _load_builtins()
    return dict(_REGISTRY)


def _load_builtins() -> None:
    from coordinator.strategies import fedavg, fednova, fedopt  # noqa: F401


__all__ = ["RoundUpdates", "Strategy", "register", "registered", "strategy_for"]
