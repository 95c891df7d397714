"""FedNova (Wang et al., NeurIPS 2020), server side: normalised averaging against objective inconsistency.

Client i took local steps whose weights on its gradients sum to ``a_i = ||a_i||_1`` (reported as the update
metric :data:`~mfcpl.wire.constants.FEDNOVA_NORM_METRIC`; ``client_sdk/algorithms/fednova.py``). With
``p_i`` the clients' sample fractions, FedNova's update is

    new = global - tau_eff * sum_i p_i * (global - w_i) / a_i,        tau_eff = sum_i p_i * a_i

which is a FedOpt-style step towards the mean of the w_i weighted by ``q_i = p_i / a_i``, with step size
``tau_eff * sum_i q_i`` (1 when every a_i is equal, where FedNova is FedAvg) and no momentum.
"""

from __future__ import annotations

import math

from coordinator.aggregation.fedavg import weighted_average
from coordinator.aggregation.fedopt import fedopt_step
from coordinator.strategies import register
from coordinator.strategies.base import Arrays, RoundUpdates, Strategy
from mfcpl.wire.constants import FEDNOVA_NORM_METRIC
from mfcpl.wire.tensors import WEIGHTS_PREFIX, parse_update_metadata, read_header


@register("fednova")
class FedNova(Strategy):
    needs_global_weights = True

    def aggregate(self, round_: RoundUpdates) -> tuple[Arrays, Arrays | None]:
        if round_.global_weights is None:
            raise ValueError("fednova needs the input model's weights")
        norms = []
        for position, (buf, _) in enumerate(round_.sources):
            metrics = parse_update_metadata(read_header(buf).metadata)[2]
            norm = metrics.get(FEDNOVA_NORM_METRIC)
            if norm is None or not (math.isfinite(norm) and norm > 0):
                raise ValueError(f"update {position} has no positive {FEDNOVA_NORM_METRIC!r} metric")
            norms.append(norm)
        total = sum(n for _, n in round_.sources)
        fractions = [n / total for _, n in round_.sources]
        tau_eff = sum(p * a for p, a in zip(fractions, norms, strict=True))
        normalised = [(buf, p / a) for (buf, _), p, a in zip(round_.sources, fractions, norms, strict=True)]
        step = tau_eff * sum(q for _, q in normalised)
        averaged = weighted_average(normalised, prefix=WEIGHTS_PREFIX)
        weights, _ = fedopt_step(round_.global_weights, averaged, None, step, 0.0)
        return weights, None
