"""FedAvg: the sample-weighted mean of the clients' weights. The server side of every algorithm whose
difference lies in local training only (FedProx, FedProto, PmcmFL, MFCPL)."""

from __future__ import annotations

from coordinator.aggregation.fedavg import weighted_average
from coordinator.strategies import register
from coordinator.strategies.base import Arrays, RoundUpdates, Strategy
from mfcpl.wire.tensors import WEIGHTS_PREFIX


@register("fedavg", "fedprox", "fedproto", "pmcmfl", "mfcpl")
class FedAvg(Strategy):
    def aggregate(self, round_: RoundUpdates) -> tuple[Arrays, Arrays | None]:
        return weighted_average(round_.sources, prefix=WEIGHTS_PREFIX), None
