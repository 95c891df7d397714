"""Complete prototypes: per level and class, the mean of the clients' local prototypes.

For each level (``shared`` or a modality) and class k, over the clients that sent a row for k this round:

* ``weighting="count"`` (default): P^k = sum_i n_i^k p_i^k / sum_i n_i^k  (n = samples behind the row);
* ``weighting="mean"``: P^k = mean_i p_i^k, the plain mean over those clients.

Either way the output count is sum_i n_i^k, so both are exact from what is stored. A class nobody sent keeps
its previous vector and count (count 0 and a zero vector when there is none); a level nobody sent is carried
over from ``previous`` unchanged. Accumulation is float64, output float32 [C, d] and counts float32 [C].

Nothing overflows silently: the sums are float64 (a float32 count or vector times a float32 count is far inside
its range), the vectors are means (within the inputs' range) and a summed count past float32's largest value
(two clients each sending a valid count of 3e38) is refused with ValueError naming the level and class, so
the round fails visibly instead of storing an Inf count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mfcpl.wire.tensors import LocalPrototypes, PrototypeTable

PROTOTYPE_WEIGHTINGS = ("count", "mean")
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _checked_rows(
    p: LocalPrototypes, level: str, client: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    classes = np.asarray(p.classes)
    vectors = np.asarray(p.vectors)
    counts = np.asarray(p.counts)
    where = f"client {client}, level {level!r}"
    if vectors.ndim != 2:
        raise ValueError(f"{where}: prototypes must be a 2-D [n, d] array, got shape {list(vectors.shape)}")
    n = vectors.shape[0]
    if classes.shape != (n,) or counts.shape != (n,):
        raise ValueError(
            f"{where}: classes {list(classes.shape)} and counts {list(counts.shape)} must both have shape [{n}]"
        )
    if classes.dtype.kind not in "iu":
        raise ValueError(f"{where}: class ids must be integers, got {classes.dtype}")
    if n and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"{where}: class ids must be in [0, {num_classes})")
    if len(np.unique(classes)) != n:
        raise ValueError(f"{where}: class ids must be distinct")
    if n and not (np.all(np.isfinite(counts)) and counts.min() > 0):
        raise ValueError(f"{where}: counts must be finite and > 0")
    if not np.all(np.isfinite(vectors)):
        raise ValueError(f"{where}: prototypes hold NaN or Inf")
    return classes.astype(np.intp), vectors.astype(np.float64), counts.astype(np.float64)


def _carried(table: PrototypeTable, level: str, num_classes: int, dim: int | None) -> PrototypeTable:
    vectors = np.array(table.vectors, dtype=np.float32)
    counts = np.array(table.counts, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != num_classes or counts.shape != (num_classes,):
        raise ValueError(
            f"previous level {level!r}: expected vectors [{num_classes}, d] and counts [{num_classes}], "
            f"got {list(vectors.shape)} and {list(counts.shape)}"
        )
    if dim is not None and vectors.shape[1] != dim:
        raise ValueError(f"level {level!r}: previous prototypes have dimension {vectors.shape[1]}, this round {dim}")
    return PrototypeTable(vectors=vectors, counts=counts)


def _aggregate_level(
    rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    level: str,
    num_classes: int,
    previous: PrototypeTable | None,
    weighting: str,
) -> PrototypeTable:
    dim = rows[0][1].shape[1]
    total = np.zeros((num_classes, dim))
    weight = np.zeros(num_classes)
    counts = np.zeros(num_classes)
    for classes, vectors, row_counts in rows:
        if vectors.shape[1] != dim:
            raise ValueError(
                f"level {level!r}: prototype dimensions differ between clients ({dim} and {vectors.shape[1]})"
            )
        w = row_counts if weighting == "count" else np.ones_like(row_counts)
        total[classes] += w[:, None] * vectors  # classes are distinct within one client
        weight[classes] += w
        counts[classes] += row_counts
    sent = weight > 0
    too_large = np.flatnonzero(~(counts <= FLOAT32_MAX))
    if too_large.size:
        k = int(too_large[0])
        raise ValueError(f"level {level!r}, class {k}: prototype counts sum to {counts[k]:.4g}, beyond the float32 "
                         f"range of a prototype set's counts")
    if not (np.all(np.isfinite(total)) and np.all(np.isfinite(weight))):
        raise ValueError(f"level {level!r}: prototype sums overflowed")
    if previous is not None:
        out = _carried(previous, level, num_classes, dim)
    else:
        out = PrototypeTable(np.zeros((num_classes, dim), np.float32), np.zeros(num_classes, np.float32))
    out.vectors[sent] = total[sent] / weight[sent, None]
    out.counts[sent] = counts[sent]
    return out


def aggregate_prototypes(
    local_sets: Sequence[Mapping[str, LocalPrototypes]],
    num_classes: int,
    previous: Mapping[str, PrototypeTable] | None,
    weighting: str = "count",
) -> dict[str, PrototypeTable]:
    """Complete prototypes per level from the clients' local sets (one mapping level -> rows per client)."""
    if weighting not in PROTOTYPE_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {PROTOTYPE_WEIGHTINGS}, got {weighting!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    previous = previous or {}
    by_level: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for client, levels in enumerate(local_sets):
        for level, p in levels.items():
            by_level.setdefault(level, []).append(_checked_rows(p, level, client, num_classes))
    out = {
        level: _aggregate_level(rows, level, num_classes, previous.get(level), weighting)
        for level, rows in by_level.items()
    }
    for level, table in previous.items():
        if level not in out:
            out[level] = _carried(table, level, num_classes, None)
    return out
