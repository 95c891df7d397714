"""Prometheus metrics of this process (one registry per process; see docs/operations.md for several workers)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

UPDATES = Counter("mfcpl_updates_total", "Update uploads by outcome (accepted, replayed, refused).",
                  ["outcome"], registry=REGISTRY)
UPDATE_REFUSALS = Counter("mfcpl_update_refusals_total", "Refused updates by problem code.", ["code"],
                          registry=REGISTRY)
UPDATE_BYTES = Counter("mfcpl_update_bytes_total", "Bytes of accepted updates.", registry=REGISTRY)
ROUNDS = Counter("mfcpl_rounds_total", "Round transitions done by this process (opened, closed, failed).",
                 ["transition"], registry=REGISTRY)
AGGREGATION_SECONDS = Histogram(
    "mfcpl_aggregation_seconds", "Time to aggregate one round (FedAvg/FedOpt and prototypes, blobs included).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=REGISTRY,
)
