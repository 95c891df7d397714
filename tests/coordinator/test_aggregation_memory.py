"""Aggregation reads update blobs with O(model size) process memory, also from the ``db`` blob store.

A round of many participants with a model of a few MB is aggregated by the coordinator's own code path
(``rounds.closing._aggregate`` over a real SQLite database holding the blobs); tracemalloc (which sees
Python objects and numpy buffers, not file-backed mmaps) bounds the peak. Holding every body at once, as a
plain ``get`` per update does, would exceed the bound several times: the test checks that too, so the bound
cannot pass by not seeing the bytes.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.core import Services
from coordinator.db.migrate import upgrade
from coordinator.model_versions.orm import ModelVersionRow
from coordinator.model_versions.service import tensor_specs
from coordinator.rounds.closing import _aggregate
from coordinator.settings import Settings
from coordinator.updates.orm import UpdateRow
from mfcpl.wire.schemas import FederationCreate
from mfcpl.wire.tensors import LocalPrototypes, Update, decode_model, encode_model, encode_update, read_header
from tests.support.federation import federation_config

PARTICIPANTS = 16
MODEL_SHAPES = {"enc.weight": (1000, 700), "enc.bias": (1000,), "head.weight": (3, 1000)}  # about 2.8 MB


@pytest.fixture
def db_store_services(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(state_dir=tmp_path, blob_store="db", admin_token="memory-test")
    services = Services.build(settings)
    upgrade(services.db.engine)
    try:
        yield services
    finally:
        services.db.dispose()


def _peak_bytes(work: Callable[[], Any]) -> tuple[int, Any]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = work()
        return tracemalloc.get_traced_memory()[1] - base, result
    finally:
        tracemalloc.stop()


def test_db_store_aggregation_holds_one_body_at_a_time(db_store_services: Services) -> None:
    services = db_store_services
    rng = np.random.default_rng(3)
    model = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in MODEL_SHAPES.items()}
    model_body = encode_model(model)
    model_sha = services.blobs.put(model_body)
    input_model = ModelVersionRow(federation_id="fed_mem", version=0, sha256=model_sha, size_bytes=len(model_body),
                                  round=None, tensor_specs=tensor_specs(read_header(model_body)),
                                  momentum_sha256=None)
    updates, expected_sum, total_samples, body_size = [], {k: np.zeros(v.shape) for k, v in model.items()}, 0, 0
    for i in range(PARTICIPANTS):
        weights = {k: v + np.float32(0.01 * (i + 1)) for k, v in model.items()}
        protos = {"shared": LocalPrototypes(classes=np.array([i % 3], np.int64),
                                            vectors=np.full((1, 4), float(i), np.float32),
                                            counts=np.array([1.0], np.float32))}
        body = encode_update(Update(weights=weights, num_samples=i + 1, base_model_version=0, prototypes=protos,
                                    metrics={"train_loss": float(i)}))
        sha = services.blobs.put(body)
        body_size = len(body)
        updates.append(UpdateRow(id=f"upd_{i}", federation_id="fed_mem", round=1, client_id=f"c{i}",
                                 num_samples=i + 1, sha256=sha, size_bytes=len(body), metrics={"train_loss": float(i)},
                                 prototype_dims={"shared": 4}, idempotency_key=None))
        for k, v in weights.items():
            expected_sum[k] += (i + 1) * v.astype(np.float64)
        total_samples += i + 1
        del body, weights
    config = FederationCreate.model_validate(federation_config(algorithm="mfcpl"))

    # The measure sees blob bytes: holding every body at once costs PARTICIPANTS bodies.
    all_at_once, held = _peak_bytes(lambda: [services.blobs.get(u.sha256) for u in updates])
    del held
    assert all_at_once >= 0.9 * PARTICIPANTS * body_size

    peak, result = _peak_bytes(lambda: _aggregate(services, config, input_model, None, updates))
    # Output model (accumulators + encoded bytes) plus one body in flight: a handful of model sizes, never
    # one per participant.
    bound = 6 * body_size
    assert peak < bound, f"aggregation peaked at {peak / 1e6:.1f} MB, bound {bound / 1e6:.1f} MB " \
                         f"({PARTICIPANTS} bodies of {body_size / 1e6:.1f} MB would be {all_at_once / 1e6:.1f} MB)"
    assert all_at_once > 2 * bound

    got = decode_model(result.model_bytes)
    for name, total in expected_sum.items():
        np.testing.assert_allclose(got[name], total / total_samples, rtol=1e-5, atol=1e-5)
    assert result.prototype_bytes is not None
    assert result.train_metrics["train_loss"] == pytest.approx(
        sum(i * (i + 1) for i in range(PARTICIPANTS)) / total_samples)
