"""FedAvg (McMahan et al., 2017) and FedOpt (Reddi et al., 2021) clients: cross-entropy only.

The two differ on the server only (``coordinator.strategies``): FedOpt applies the averaged update with
server momentum.
"""

from __future__ import annotations

from client_sdk.algorithms import register
from client_sdk.algorithms.base import ClientAlgorithm


@register("fedavg", "fedopt")
class FedAvg(ClientAlgorithm):
    """Plain local SGD on the cross-entropy."""
