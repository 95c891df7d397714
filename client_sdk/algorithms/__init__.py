"""Client-side algorithms as plug-ins: one module per algorithm, found through :func:`client_algorithm`.

Each module defines a :class:`~client_sdk.algorithms.base.ClientAlgorithm` subclass and registers it under
its name(s) in :class:`mfcpl.wire.schemas.Algorithm`; the coordinator has the matching server-side strategy
in ``coordinator.strategies``. docs/architecture.md walks through adding one.
"""

from __future__ import annotations

from client_sdk.algorithms.base import ClientAlgorithm, LocalRound, LossTerm
from mfcpl.wire.plugins import Registry


def _load_builtins() -> None:
    from client_sdk.algorithms import fedavg, fednova, fedproto, fedprox, flism, mfcpl, pmcmfl  # noqa: F401


ALGORITHMS: Registry[ClientAlgorithm] = Registry("client-side algorithm", _load_builtins)
register = ALGORITHMS.register
client_algorithm = ALGORITHMS.get
registered = ALGORITHMS.all

__all__ = ["ALGORITHMS", "ClientAlgorithm", "LocalRound", "LossTerm", "client_algorithm", "register", "registered"]
