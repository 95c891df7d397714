"""FedNova (Wang et al., NeurIPS 2020), client side: plain local SGD that reports how far it stepped.

Clients with more data take more local steps and pull FedAvg's mean towards their own optimum. FedNova's
server (``coordinator/strategies/fednova.py``) divides each client's change by its normalising factor
``||a_i||_1`` before averaging. For momentum SGD with ``tau`` steps and momentum ``rho`` that factor is
``(tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)`` (``tau`` for plain SGD); the client reports it
as the update metric :data:`~mfcpl.wire.constants.FEDNOVA_NORM_METRIC`.
"""

from __future__ import annotations

from client_sdk.algorithms import register
from client_sdk.algorithms.base import ClientAlgorithm, LocalRound
from mfcpl.wire.constants import FEDNOVA_NORM_METRIC


def normalising_factor(steps: int, momentum: float) -> float:
    """``||a||_1`` of ``steps`` momentum-SGD steps: the sum of every step's weight on the gradients."""
    if momentum == 0:
        return float(steps)
    return (steps - momentum * (1 - momentum**steps) / (1 - momentum)) / (1 - momentum)


@register("fednova")
class FedNova(ClientAlgorithm):
    def __init__(self, local: LocalRound) -> None:
        super().__init__(local)
        self.steps = 0

    def after_step(self) -> None:
        self.steps += 1

    def round_metrics(self) -> dict[str, float]:
        return {FEDNOVA_NORM_METRIC: normalising_factor(self.steps, self.local.config.training.momentum)}
