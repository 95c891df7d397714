"""FLISM (Orzikulova et al., arXiv 2405.11828), server side: modality-quality-aware aggregation.

Each client reports ``H_i``, the mean prediction entropy of its trained local model over its own training data
(update metric :data:`FLISM_ENTROPY_METRIC`; ``client_sdk/algorithms/flism.py``). A client whose modalities
let it predict confidently gets more weight:

    new = sum_i q_i w_i / sum_i q_i,        q_i = 1 / max(H_i, floor)            (flism_weighting = entropy)
                                            q_i = n_i / max(H_i, floor)          (entropy_x_samples)

The first is the paper's code (sample counts ignored); ``floor`` is ``training.flism_entropy_floor``. An update
without a finite, non-negative ``H_i`` fails the round with that reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from coordinator.aggregation.fedavg import weighted_average
from coordinator.strategies import register
from coordinator.strategies.base import Arrays, RoundUpdates, Strategy
from mfcpl.wire.tensors import WEIGHTS_PREFIX, parse_update_metadata, read_header

FLISM_ENTROPY_METRIC = "flism_entropy"
"""The update metric weighted by (the same string as in ``client_sdk/algorithms/flism.py``)."""


def quality_weights(entropies: Sequence[float], num_samples: Sequence[float], floor: float,
                    sample_weighted: bool) -> list[float]:
    """The clients' normalised aggregation weights (they sum to 1)."""
    raw = [(n if sample_weighted else 1.0) / max(h, floor) for h, n in zip(entropies, num_samples, strict=True)]
    total = math.fsum(raw)
    return [q / total for q in raw]


@register("flism")
class Flism(Strategy):
    def aggregate(self, round_: RoundUpdates) -> tuple[Arrays, Arrays | None]:
        training = round_.config.training
        entropies = []
        for position, (buf, _) in enumerate(round_.sources):
            entropy = parse_update_metadata(read_header(buf).metadata)[2].get(FLISM_ENTROPY_METRIC)
            if entropy is None or not (math.isfinite(entropy) and entropy >= 0):
                raise ValueError(f"update {position} has no finite, non-negative {FLISM_ENTROPY_METRIC!r} metric")
            entropies.append(entropy)
        weights = quality_weights(entropies, [n for _, n in round_.sources], training.flism_entropy_floor,
                                  training.flism_weighting == "entropy_x_samples")
        sources = [(buf, w) for (buf, _), w in zip(round_.sources, weights, strict=True)]
        return weighted_average(sources, prefix=WEIGHTS_PREFIX), None
