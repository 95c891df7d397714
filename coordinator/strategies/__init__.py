"""Server-side strategies as plug-ins: one module per strategy, found through :func:`strategy_for`.

Every name in :class:`mfcpl.wire.schemas.Algorithm` has a strategy here and a client-side algorithm in
``client_sdk.algorithms``. Pure numpy, no I/O, no torch (docs/design.md contract 1).
"""

from __future__ import annotations

from coordinator.strategies.base import RoundUpdates, Strategy
from mfcpl.wire.plugins import Registry


def _load_builtins() -> None:
    from coordinator.strategies import fedavg, fednova, fedopt, flism  # noqa: F401


STRATEGIES: Registry[Strategy] = Registry("server-side strategy", _load_builtins)
register = STRATEGIES.register
registered = STRATEGIES.all


def strategy_for(algorithm: str) -> Strategy:
    """A fresh instance of the server-side strategy of ``algorithm``."""
    return STRATEGIES.get(algorithm)()


__all__ = ["STRATEGIES", "RoundUpdates", "Strategy", "register", "registered", "strategy_for"]
