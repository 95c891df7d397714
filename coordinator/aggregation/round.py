"""One round's aggregation as a pure function: the new global model and strategy state, complete prototypes.

Shared by the coordinator (over stored update blobs) and the in-process experiment transport (over update
bytes in memory), so both compute the same round from the same updates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from coordinator.aggregation.fedavg import Buffer
from coordinator.aggregation.prototypes import aggregate_prototypes
from coordinator.strategies import RoundUpdates, strategy_for
from mfcpl.wire.constants import MAX_METRICS
from mfcpl.wire.schemas import FederationCreate
from mfcpl.wire.tensors import LocalPrototypes, PrototypeTable, decode_update

log = logging.getLogger("mfcpl.aggregation")

FINITE_CHUNK = 1 << 20  # elements per isfinite pass over an output tensor


@dataclass
class RoundAggregate:
    weights: dict[str, np.ndarray]  # in the input model's dtypes
    state: dict[str, np.ndarray] | None  # the strategy's state (FedOpt's momentum); None for stateless ones
    prototypes: dict[str, PrototypeTable] | None  # None when there is no complete prototype at all


def aggregate_round(
    config: FederationCreate,
    sources: Sequence[tuple[Buffer, float]],
    dtypes: Mapping[str, np.dtype],
    *,
    global_weights: Mapping[str, np.ndarray] | None = None,
    state: Mapping[str, np.ndarray] | None = None,
    previous: Mapping[str, PrototypeTable] | None = None,
) -> RoundAggregate:
    """Aggregate a round's updates (``sources`` = update bodies with their num_samples, in a fixed order).

    ``dtypes`` are the input model's tensor dtypes (every output tensor is cast back to them, so the next round
    validates against the same specs); ``global_weights`` are needed when the algorithm's strategy says so
    (``strategy_for(config.algorithm).needs_global_weights``) and ``state`` is the strategy's state after the
    previous round. Prototypes are copied out of ``sources``, so no view outlives the buffers.
    """
    strategy = strategy_for(config.algorithm)
    new_weights, new_state = strategy.aggregate(RoundUpdates(config, sources, global_weights, state))
    local_sets: list[dict[str, LocalPrototypes]] = []
    for buf, _ in sources:
        sent = {level: LocalPrototypes(classes=p.classes.copy(), vectors=p.vectors.copy(), counts=p.counts.copy())
                for level, p in decode_update(buf).prototypes.items()}
        if sent:
            local_sets.append(sent)
    weights = {name: np.asarray(new_weights[name]).astype(dtype, copy=False) for name, dtype in dtypes.items()}
    _check_finite(weights, "the aggregated model")
    if new_state is not None:
        _check_finite(new_state, f"the {config.algorithm} server state")
    tables = None
    if local_sets or previous:
        tables = aggregate_prototypes(local_sets, config.num_classes, previous,
                                      weighting=config.training.prototype_weighting) or None
    return RoundAggregate(weights, new_state, tables)


def _check_finite(tensors: Mapping[str, np.ndarray], what: str) -> None:
    """ValueError naming the first float tensor that holds NaN or Inf (an overflow while aggregating: a mean of
    values near the dtype's limit, a server step past it). Such a result is refused, never stored."""
    for name, tensor in tensors.items():
        flat = np.asarray(tensor).reshape(-1)
        if flat.dtype.kind not in "fc":
            continue
        for start in range(0, flat.size, FINITE_CHUNK):
            if not np.isfinite(flat[start:start + FINITE_CHUNK]).all():
                raise ValueError(f"{what}: tensor {name!r} overflowed to NaN or Inf ({flat.dtype})")


def weighted_metrics(items: Sequence[tuple[Mapping[str, float], float]]) -> dict[str, float]:
    """Per metric name, the sample-weighted mean over the updates that reported it.

    Computed so that it cannot overflow: each value is multiplied by its update's share of the weight
    (``w_i / sum w``, at most 1) and the products are summed exactly (``math.fsum``, float64), so the mean of
    finite values is finite however large the values or weights (``loss = 1e308`` with ``num_samples = 2``
    gives 1e308, not Infinity). A metric whose mean is still not a finite number (a NaN or Inf value, which
    validation refuses on upload) is left out, with the reason logged, so the round's metrics stay storable
    JSON. At most ``MAX_METRICS`` names are kept (those reported by the most updates, then by name), so the
    union over many clients cannot grow a round's metrics past what one update may carry.
    """
    reported: dict[str, list[tuple[float, float]]] = {}
    for metrics, weight in items:
        for name, value in metrics.items():
            reported.setdefault(name, []).append((float(weight), float(value)))
    if len(reported) > MAX_METRICS:
        kept = sorted(reported, key=lambda name: (-len(reported[name]), name))[:MAX_METRICS]
        log.warning("round metrics: %d names reported, keeping %d", len(reported), MAX_METRICS)
        reported = {name: reported[name] for name in kept}
    out: dict[str, float] = {}
    for name in sorted(reported):
        pairs = reported[name]
        total = math.fsum(w for w, _ in pairs)
        if not (math.isfinite(total) and total > 0):
            log.warning("metric %r left out of the round's metrics: weights sum to %r", name, total)
            continue
        try:
            mean = math.fsum((w / total) * v for w, v in pairs)
        except (OverflowError, ValueError):  # fsum: intermediate overflow, or inf - inf
            mean = math.nan
        if not math.isfinite(mean):
            log.warning("metric %r left out of the round's metrics: its weighted mean is %r", name, mean)
            continue
        out[name] = mean
    return out
