"""FedOpt (Reddi et al., 2021) with server momentum SGD: the averaged client change is a pseudo-gradient.

The step itself is :func:`coordinator.aggregation.fedopt.fedopt_step`; its momentum is this strategy's state.
"""

from __future__ import annotations

from coordinator.aggregation.fedavg import weighted_average
from coordinator.aggregation.fedopt import fedopt_step
from coordinator.strategies import register
from coordinator.strategies.base import Arrays, RoundUpdates, Strategy
from mfcpl.wire.tensors import WEIGHTS_PREFIX


@register("fedopt")
class FedOpt(Strategy):
    needs_global_weights = True
    stateful = True

    def aggregate(self, round_: RoundUpdates) -> tuple[Arrays, Arrays | None]:
        if round_.global_weights is None:
            raise ValueError("fedopt needs the input model's weights")
        averaged = weighted_average(round_.sources, prefix=WEIGHTS_PREFIX)
        training = round_.config.training
        return fedopt_step(round_.global_weights, averaged, round_.state, training.server_lr, training.server_momentum)
