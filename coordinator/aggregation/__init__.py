"""Server-side aggregation in pure numpy: FedAvg, FedOpt and complete prototypes.

Pure functions, no I/O, no torch (docs/design.md contract 1). Updates are read zero-copy from their stored
safetensors bytes (``bytes``, ``bytearray``, ``memoryview`` or an ``mmap.mmap`` of the file).
"""

from coordinator.aggregation.fedavg import Buffer, weighted_average
from coordinator.aggregation.fedopt import fedopt_step
from coordinator.aggregation.prototypes import PROTOTYPE_WEIGHTINGS, aggregate_prototypes
from coordinator.aggregation.round import RoundAggregate, aggregate_round, weighted_metrics

__all__ = ["PROTOTYPE_WEIGHTINGS", "Buffer", "RoundAggregate", "aggregate_prototypes", "aggregate_round",
           "fedopt_step", "weighted_average", "weighted_metrics"]
