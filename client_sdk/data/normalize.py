"""Feature standardisation: ``(x - mean) / std`` per feature of the last axis, as the wire's ``Normalization``.

Statistics come from sums a client can share (count, sum and sum of squares per feature, float64), over the
samples that HAVE the modality and, for sequence kinds (``timeseries``, ``tokens``), over the rows that are not
padding (a row of all zeros is padding). Only the kinds in :data:`~mfcpl.wire.schemas.NORMALIZED_KINDS`
(vector, timeseries, tokens) are standardised; ``text`` token ids never are.

Modes (``Normalization.mode``):

* ``federated``: one mean / std per modality from every client's training sums combined (what a secure-sum
  round over the clients gives; never dev or test data); the same transform for clients, dev and test;
* ``client``: each client standardises with its own statistics; an evaluator with those of the data it
  scores (dev and test each with their own);
* ``none``: features as loaded.

Absent samples and padding rows stay exactly zero after the transform.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from client_sdk.data.arrays import MultimodalArrays
from client_sdk.data.federated import ClientShard, FederatedDataset
from mfcpl.wire.schemas import NORMALIZED_KINDS, FeatureStats, ModalityKind, ModalitySpec, Normalization, feature_dim

STD_FLOOR = 1e-6
"""The smallest std used: a constant feature is centred, not blown up."""
SEQUENCE_KINDS = frozenset({ModalityKind.TIMESERIES, ModalityKind.TOKENS})


@dataclass(frozen=True)
class FeatureSums:
    """What one client shares about one modality: rows counted, and per feature the sum and sum of squares."""

    count: float
    sum: np.ndarray
    sum_squares: np.ndarray

    def __add__(self, other: FeatureSums) -> FeatureSums:
        return FeatureSums(self.count + other.count, self.sum + other.sum, self.sum_squares + other.sum_squares)


SUMS_FORMAT = "mfcpl-feature-sums/1"


def sums_to_json(sums: Mapping[str, FeatureSums], dataset: str = "") -> dict[str, Any]:
    """A client's sums as JSON (what ``mfcpl client stats`` writes): aggregates only, never a sample."""
    modalities = {name: {"count": part.count, "sum": part.sum.tolist(), "sum_squares": part.sum_squares.tolist()}
                  for name, part in sums.items()}
    return {"format": SUMS_FORMAT, "dataset": dataset, "modalities": modalities}


def sums_from_json(raw: Any, source: str = "sums") -> dict[str, FeatureSums]:
    """The sums a :func:`sums_to_json` document holds; ``ValueError`` naming ``source`` when it is not one."""
    if not isinstance(raw, dict) or raw.get("format") != SUMS_FORMAT or not isinstance(raw.get("modalities"), dict):
        raise ValueError(f"{source}: not a feature-sums file (format {SUMS_FORMAT}, written by mfcpl client stats)")
    out = {}
    for name, part in raw["modalities"].items():
        try:
            count = float(part["count"])
            total = np.asarray(part["sum"], dtype=np.float64)
            squares = np.asarray(part["sum_squares"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: modality {name!r}: {exc}") from None
        if total.ndim != 1 or total.shape != squares.shape or count < 0 or not (
                np.isfinite(total).all() and np.isfinite(squares).all() and np.isfinite(count)):
            raise ValueError(f"{source}: modality {name!r}: count, sum and sum_squares must be finite, the sums "
                             "one-dimensional and of the same length")
        out[name] = FeatureSums(count, total, squares)
    return out


def specs_from_arrays(arrays: MultimodalArrays) -> list[ModalitySpec]:
    """Modality specs read off arrays: float [N, D] is a vector, float [N, L, D] a sequence, integers are text.
    Enough for :func:`feature_sums` where no layout is at hand (a node's own file)."""
    specs = []
    for name, x in arrays.inputs.items():
        if np.issubdtype(x.dtype, np.integer):
            specs.append(ModalitySpec(name=name, kind=ModalityKind.TEXT, shape=list(x.shape[1:])))
        elif x.ndim == 2:
            specs.append(ModalitySpec(name=name, kind=ModalityKind.VECTOR, shape=list(x.shape[1:])))
        elif x.ndim == 3:
            specs.append(ModalitySpec(name=name, kind=ModalityKind.TIMESERIES, shape=list(x.shape[1:])))
    return specs


def normalized_specs(modalities: Sequence[ModalitySpec]) -> list[ModalitySpec]:
    """The modalities that are standardised (vector, timeseries, tokens)."""
    return [spec for spec in modalities if spec.kind in NORMALIZED_KINDS]


def valid_rows(x: np.ndarray, present: np.ndarray, kind: ModalityKind) -> np.ndarray:
    """[N, ...] bool over ``x``'s feature rows: the sample has the modality and the row is not padding."""
    rows = np.broadcast_to(present.reshape(-1, *([1] * (x.ndim - 2))), x.shape[:-1])
    if kind in SEQUENCE_KINDS:
        rows = rows & np.any(x != 0, axis=-1)
    return rows


def feature_sums(arrays: MultimodalArrays, modalities: Sequence[ModalitySpec]) -> dict[str, FeatureSums]:
    """Count, sum and sum of squares per feature of each standardised modality, over its valid rows."""
    sums = {}
    for spec in normalized_specs(modalities):
        x = arrays.inputs[spec.name]
        rows = x[valid_rows(x, arrays.present[spec.name], spec.kind)].astype(np.float64)
        sums[spec.name] = FeatureSums(float(len(rows)), rows.sum(axis=0), np.square(rows).sum(axis=0))
    return sums


def stats_from_sums(sums: FeatureSums) -> FeatureStats:
    """Mean and population std (floored at :data:`STD_FLOOR`) from combined sums."""
    mean = sums.sum / sums.count
    variance = np.maximum(sums.sum_squares / sums.count - np.square(mean), 0.0)
    std = np.maximum(np.sqrt(variance), STD_FLOOR)
    return FeatureStats(mean=mean.tolist(), std=std.tolist(), count=sums.count)


def combine_sums(parts: Sequence[Mapping[str, FeatureSums]]) -> dict[str, FeatureStats]:
    """The statistics of the union of the parts (e.g. one per client); a modality no part has rows of is
    left out (it is then not standardised)."""
    totals: dict[str, FeatureSums] = {}
    for part in parts:
        for name, sums in part.items():
            totals[name] = totals[name] + sums if name in totals else sums
    return {name: stats_from_sums(sums) for name, sums in totals.items() if sums.count > 0}


def _client_sums(federation: FederatedDataset) -> list[dict[str, FeatureSums]]:
    return [feature_sums(c.data, federation.modalities) for c in federation.clients]


def federated_normalization(federation: FederatedDataset) -> Normalization:
    """``federated`` mode with the statistics of the clients' training data (never dev or test)."""
    stats = combine_sums(_client_sums(federation))
    if not stats:
        raise ValueError(f"{federation.name}: no client holds any vector, timeseries or tokens features to "
                         "standardise")
    return Normalization(mode="federated", stats=stats)


def _standardise(x: np.ndarray, rows: np.ndarray, stats: FeatureStats) -> np.ndarray:
    mean = np.asarray(stats.mean, dtype=np.float64)
    std = np.asarray(stats.std, dtype=np.float64)
    if mean.shape != (x.shape[-1],):
        raise ValueError(f"statistics for {len(mean)} features, the data has {x.shape[-1]}")
    out = ((x.astype(np.float64) - mean) / std).astype(np.float32)
    out[~rows] = 0.0
    return out


def _stats_for(
    arrays: MultimodalArrays, normalization: Normalization, modalities: Sequence[ModalitySpec]
) -> dict[str, FeatureStats]:
    if normalization.mode == "client":
        return combine_sums([feature_sums(arrays, modalities)])
    return dict(normalization.stats or {})


def normalize_arrays(
    arrays: MultimodalArrays, normalization: Normalization, modalities: Sequence[ModalitySpec]
) -> MultimodalArrays:
    """New arrays with the standardised modalities as float32 (``client`` mode: the arrays' own statistics).

    Absent samples and padding rows stay zero; ``text`` and modalities without statistics are the input's
    arrays; ``none`` returns ``arrays`` itself.
    """
    if normalization.mode == "none":
        return arrays
    stats = _stats_for(arrays, normalization, modalities)
    inputs = dict(arrays.inputs)
    for spec in normalized_specs(modalities):
        if spec.name in stats:
            x = arrays.inputs[spec.name]
            try:
                inputs[spec.name] = _standardise(x, valid_rows(x, arrays.present[spec.name], spec.kind),
                                                 stats[spec.name])
            except ValueError as exc:
                raise ValueError(f"normalization of {spec.name!r}: {exc}") from exc
    return MultimodalArrays(inputs, dict(arrays.present), arrays.labels)


def _check_widths(normalization: Normalization, modalities: Sequence[ModalitySpec]) -> None:
    specs = {spec.name: spec for spec in modalities}
    for name, stats in (normalization.stats or {}).items():
        if name in specs and len(stats.mean) != feature_dim(specs[name]):
            raise ValueError(f"normalization of {name!r}: {len(stats.mean)} values, the feature width is "
                             f"{feature_dim(specs[name])}")


def normalize_federation(federation: FederatedDataset, mode: str) -> tuple[FederatedDataset, Normalization]:
    """``federation`` standardised as ``mode`` says (module docstring) and the ``Normalization`` to record in
    the federation config. ``federated``: one transform (the clients' combined statistics) for clients, dev and
    test; ``client``: every client, the dev set and the test set each with their own statistics."""
    if mode not in ("none", "federated", "client"):
        raise ValueError(f"normalization mode must be none, federated or client, got {mode!r}")
    if mode == "none":
        return federation, Normalization()
    normalization = federated_normalization(federation) if mode == "federated" else Normalization(mode="client")
    _check_widths(normalization, federation.modalities)

    def apply(arrays: MultimodalArrays) -> MultimodalArrays:
        return normalize_arrays(arrays, normalization, federation.modalities)

    clients = [ClientShard(c.name, apply(c.data), c.indices, c.subject) for c in federation.clients]
    result = replace(federation, clients=clients, dev=apply(federation.dev), test=apply(federation.test))
    result.options = {**federation.options, "normalization": mode}
    return result, normalization
