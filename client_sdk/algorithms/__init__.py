"""Client-side algorithms as plug-ins: one module per algorithm, found through :func:`client_algorithm`.

Each module defines a :class:`~client_sdk.algorithms.base.ClientAlgorithm` subclass and registers it under
its name(s) in :class:`mfcpl.wire.schemas.Algorithm`; the coordinator has the matching server-side strategy
in ``coordinator.strategies``. docs/architecture.md walks through adding one.
"""

from __future__ import annotations

from collections.abc import Callable

from client_sdk.algorithms.base import ClientAlgorithm, LocalRound, LossTerm

_REGISTRY: dict[str, type[ClientAlgorithm]] = {}


def register(*names: str) -> Callable[[type[ClientAlgorithm]], type[ClientAlgorithm]]:
    """Class decorator: ``cls`` trains the algorithms ``names``."""

    def decorate(cls: type[ClientAlgorithm]) -> type[ClientAlgorithm]:
        for name in names:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise ValueError(f"algorithm {name!r} is registered twice ({_REGISTRY[name].__name__}, {cls.__name__})")
            _REGISTRY[name] = cls
        cls.name = names[0]
        return cls

    return decorate


def client_algorithm(name: str) -> type[ClientAlgorithm]:
    """The client-side class of algorithm ``name``."""
    _load_builtins()
    try:
        return _REGISTRY[str(name)]
    except KeyError:
        raise ValueError(f"no client-side algorithm {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def registered() -> dict[str, type[ClientAlgorithm]]:
    _load_builtins()
    return dict(_REGISTRY)


def _load_builtins() -> None:
    from client_sdk.algorithms import fedavg, fednova, fedproto, fedprox, mfcpl, pmcmfl  # noqa: F401


__all__ = ["ClientAlgorithm", "LocalRound", "LossTerm", "client_algorithm", "register", "registered"]
