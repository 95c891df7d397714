"""Hypothesis properties of a round's aggregation over random finite inputs, extremes included (float32 values up to
3.4e38, sample counts up to 2^31-1, metrics up to 1e308): the result is finite or the round is refused with a
ValueError (which fails the round visibly), never an overflow to Inf/NaN, never another exception."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.aggregation import aggregate_round, weighted_metrics
from mfcpl.wire.schemas import FederationCreate
from mfcpl.wire.tensors import MAX_NUM_SAMPLES, LocalPrototypes, Update, encode_update

FLOAT32_MAX = float(np.finfo(np.float32).max)
finite32 = st.floats(-FLOAT32_MAX, FLOAT32_MAX, allow_nan=False, allow_infinity=False, width=32)
positive32 = st.floats(min_value=float(np.finfo(np.float32).tiny), max_value=FLOAT32_MAX, allow_nan=False,
                       allow_infinity=False, width=32)
finite64 = st.floats(-1e308, 1e308, allow_nan=False, allow_infinity=False)


def _config(algorithm: str) -> FederationCreate:
    return FederationCreate.model_validate({
        "name": "p", "algorithm": algorithm, "num_classes": 3,
        "modalities": [{"name": "acc", "kind": "vector", "shape": [2]}],
        "training": {"server_lr": 1.0, "server_momentum": 0.5}})


@st.composite
def rounds(draw: st.DrawFn) -> tuple[str, list[tuple[bytes, float]], dict[str, np.ndarray]]:
    algorithm = draw(st.sampled_from(["fedavg", "fedopt", "mfcpl"]))
    count = draw(st.integers(1, 4))
    global_w = {"w": np.array(draw(st.lists(finite32, min_size=3, max_size=3)), np.float32)}
    sources = []
    for _ in range(count):
        weights = {"w": np.array(draw(st.lists(finite32, min_size=3, max_size=3)), np.float32)}
        n = draw(st.integers(1, MAX_NUM_SAMPLES))
        protos = {}
        if algorithm == "mfcpl" and draw(st.booleans()):
            protos["shared"] = LocalPrototypes(
                classes=np.array([0, 2], np.int64),
                vectors=np.array(draw(st.lists(finite32, min_size=4, max_size=4)), np.float32).reshape(2, 2),
                counts=np.array(draw(st.lists(positive32, min_size=2, max_size=2)), np.float32))
        metrics = {"loss": draw(finite64)}
        body = encode_update(Update(weights=weights, num_samples=n, base_model_version=0, prototypes=protos,
                                    metrics=metrics))
        sources.append((body, float(n)))
    return algorithm, sources, global_w


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(rounds())
def test_a_round_aggregates_to_finite_values_or_is_refused(drawn: tuple[str, list[tuple[bytes, float]],
                                                                         dict[str, np.ndarray]]) -> None:
    algorithm, sources, global_w = drawn
    try:
        result = aggregate_round(_config(algorithm), sources, {"w": np.dtype(np.float32)}, global_weights=global_w)
    except ValueError:
        return  # refused: the coordinator fails the round with this reason
    assert all(np.isfinite(v).all() for v in result.weights.values())
    if result.state is not None:
        assert all(np.isfinite(v).all() for v in result.state.values())
    for table in (result.prototypes or {}).values():
        assert np.isfinite(table.vectors).all() and np.isfinite(table.counts).all()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.dictionaries(st.sampled_from(["loss", "acc", "x"]), finite64, max_size=3),
                          st.floats(1, MAX_NUM_SAMPLES)), max_size=6))
def test_weighted_metrics_are_finite_and_within_the_reported_range(items: list[tuple[dict[str, float], float]]) -> None:
    means = weighted_metrics(items)
    for name, mean in means.items():
        reported = [m[name] for m, _ in items if name in m]
        assert math.isfinite(mean)
        assert min(reported) - 1e-9 * abs(min(reported)) <= mean <= max(reported) + 1e-9 * abs(max(reported))
