"""One round's aggregation as a pure function: the new global model, FedOpt's momentum, complete prototypes.

Shared by the coordinator (over stored update blobs) and the in-process experiment transport (over update
bytes in memory), so both compute the same round from the same updates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from coordinator.aggregation.fedavg import Buffer, weighted_average
from coordinator.aggregation.fedopt import fedopt_step
from coordinator.aggregation.prototypes import aggregate_prototypes
from mfcpl.wire.schemas import Algorithm, FederationCreate
from mfcpl.wire.tensors import LocalPrototypes, PrototypeTable, decode_update


@dataclass
class RoundAggregate:
    weights: dict[str, np.ndarray]  # in the input model's dtypes
    momentum: dict[str, np.ndarray] | None  # FedOpt's server momentum; None for the other algorithms
    prototypes: dict[str, PrototypeTable] | None  # None when there is no complete prototype at all


def aggregate_round(
    config: FederationCreate,
    sources: Sequence[tuple[Buffer, float]],
    dtypes: Mapping[str, np.dtype],
    *,
    global_weights: Mapping[str, np.ndarray] | None = None,
    momentum: Mapping[str, np.ndarray] | None = None,
    previous: Mapping[str, PrototypeTable] | None = None,
) -> RoundAggregate:
    """Aggregate a round's updates (``sources`` = update bodies with their num_samples, in a fixed order).

    ``dtypes`` are the input model's tensor dtypes (every output tensor is cast back to them, so the next round
    validates against the same specs); ``global_weights`` and ``momentum`` are needed for ``fedopt`` only.
    Prototypes are copied out of ``sources``, so no view outlives the buffers.
    """
    averaged = weighted_average(sources, prefix="weights/")
    local_sets: list[dict[str, LocalPrototypes]] = []
    for buf, _ in sources:
        sent = {level: LocalPrototypes(classes=p.classes.copy(), vectors=p.vectors.copy(), counts=p.counts.copy())
                for level, p in decode_update(buf).prototypes.items()}
        if sent:
            local_sets.append(sent)
    new_momentum = None
    if config.algorithm == Algorithm.FEDOPT:
        if global_weights is None:
            raise ValueError("fedopt needs the input model's weights")
        new_weights, new_momentum = fedopt_step(global_weights, averaged, momentum, config.training.server_lr,
                                                config.training.server_momentum)
    else:
        new_weights = averaged
    weights = {name: np.asarray(new_weights[name]).astype(dtype, copy=False) for name, dtype in dtypes.items()}
    tables = None
    if local_sets or previous:
        tables = aggregate_prototypes(local_sets, config.num_classes, previous,
                                      weighting=config.training.prototype_weighting) or None
    return RoundAggregate(weights, new_momentum, tables)


def weighted_metrics(items: Sequence[tuple[Mapping[str, float], float]]) -> dict[str, float]:
    """Per metric name, the sample-weighted mean over the updates that reported it."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for metrics, weight in items:
        for name, value in metrics.items():
            sums[name] = sums.get(name, 0.0) + weight * float(value)
            weights[name] = weights.get(name, 0.0) + weight
    return {name: sums[name] / weights[name] for name in sorted(sums) if weights[name] > 0}
