"""Algorithms as plug-ins: every algorithm has a client side and a server side, and FedNova (added as one module
per side) trains, reports its normalising factor and aggregates as its paper says, over HTTP and in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client_sdk.algorithms import client_algorithm, registered
from client_sdk.algorithms.fednova import normalising_factor
from client_sdk.model import build_model
from client_sdk.trainer import train_local
from coordinator.aggregation import aggregate_round
from coordinator.strategies import registered as registered_strategies
from coordinator.strategies import strategy_for
from mfcpl.experiments.config import ExperimentConfig
from mfcpl.experiments.runner import run_experiment, run_experiment_inprocess
from mfcpl.wire.constants import FEDNOVA_NORM_METRIC
from mfcpl.wire.schemas import Algorithm, FederationCreate
from mfcpl.wire.tensors import Update, encode_update
from tests.sdk.conftest import har_config, load_har_slice

DATA_DIR = str(Path(__file__).resolve().parents[1].parent / "shared" / "data")


def test_every_algorithm_has_a_client_side_and_a_server_side() -> None:
    names = {a.value for a in Algorithm}
    assert set(registered()) == names
    assert set(registered_strategies()) == names
    for name in names:
        assert client_algorithm(name).name in names
        assert strategy_for(name).name in names
    with pytest.raises(ValueError, match="no client-side algorithm"):
        client_algorithm("fedsomething")
    with pytest.raises(ValueError, match="no server-side strategy"):
        strategy_for("fedsomething")


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_normalising_factor_is_the_sum_of_the_gradient_weights_of_momentum_sgd(steps: int, momentum: float) -> None:
    # Step t moves by lr * v_t with v_t = momentum * v_{t-1} + g_t: gradient g_s weighs sum_{t>=s} momentum^(t-s).
    weights = [sum(momentum ** (t - s) for t in range(s, steps)) for s in range(steps)]
    assert normalising_factor(steps, momentum) == pytest.approx(sum(weights), rel=1e-12)


def _config(algorithm: str) -> FederationCreate:
    cfg = FederationCreate.model_validate({"name": "t", "algorithm": algorithm, "num_classes": 3,
                                           "modalities": [{"name": "x", "kind": "vector", "shape": [4]}]})
    return cfg


def _update_body(weights: dict[str, np.ndarray], num_samples: int, norm: float | None) -> bytes:
    metrics = {} if norm is None else {FEDNOVA_NORM_METRIC: norm}
    return encode_update(Update(weights=weights, num_samples=num_samples, base_model_version=0, metrics=metrics))


def test_fednova_matches_its_update_rule_and_is_fedavg_when_every_client_stepped_alike() -> None:
    rng = np.random.default_rng(0)
    global_w = {"w": rng.normal(size=(5, 3)).astype(np.float32), "n": np.array([4], np.int64)}
    clients = [({"w": rng.normal(size=(5, 3)).astype(np.float32), "n": np.array([4], np.int64)}, n, a)
               for n, a in ((10, 3.0), (30, 9.5), (60, 20.0))]
    dtypes = {k: v.dtype for k, v in global_w.items()}
    sources = [(_update_body(w, n, a), float(n)) for w, n, a in clients]
    got = aggregate_round(_config("fednova"), sources, dtypes, global_weights=global_w).weights
    p = np.array([n for _, n, _ in clients], float) / 100
    a = np.array([a for _, _, a in clients])
    expected = global_w["w"] - (p * a).sum() * sum(pi * (global_w["w"] - w["w"]) / ai
                                                    for pi, (w, _, _), ai in zip(p, clients, a, strict=True))
    np.testing.assert_allclose(got["w"], expected, rtol=1e-5, atol=1e-6)
    assert got["n"].dtype == np.int64 and int(got["n"][0]) == 4
    alike = [(_update_body(w, n, 5.0), float(n)) for w, n, _ in clients]
    fednova = aggregate_round(_config("fednova"), alike, dtypes, global_weights=global_w).weights
    fedavg = aggregate_round(_config("fedavg"), alike, dtypes).weights
    np.testing.assert_allclose(fednova["w"], fedavg["w"], rtol=1e-5, atol=1e-6)


def test_fednova_refuses_an_update_without_its_factor() -> None:
    w = {"w": np.ones((2, 2), np.float32)}
    sources = [(_update_body(w, 5, None), 5.0)]
    with pytest.raises(ValueError, match=FEDNOVA_NORM_METRIC):
        aggregate_round(_config("fednova"), sources, {"w": np.dtype(np.float32)}, global_weights=w)


def test_fednova_client_reports_the_factor_of_the_steps_it_took() -> None:
    data = load_har_slice(40, seed=5)
    cfg = har_config("fednova", local_epochs=2, batch_size=16)
    result = train_local(build_model(cfg, seed=0), data, cfg, seed=0)
    steps = 2 * 3  # ceil(40 / 16) batches per epoch
    assert result.metrics[FEDNOVA_NORM_METRIC] == pytest.approx(normalising_factor(steps, cfg.training.momentum))
    assert result.prototypes == {}


def test_fednova_federation_over_http_equals_in_process_and_differs_from_fedavg(tmp_path: Path) -> None:
    base = {"subjects": [1, 3, 5], "shards_per_subject": 1, "alpha": 5.0, "clients_per_round": 3, "rounds": 2,
            "eval_every": 1, "data_dir": DATA_DIR, "seed": 3, "training": {"local_epochs": 1}}
    cfg = ExperimentConfig.model_validate({**base, "algorithm": "fednova"})
    over_http = run_experiment(cfg, tmp_path / "http", workers=2, progress=lambda _: None)
    local = run_experiment_inprocess(cfg, tmp_path / "local", workers=2, progress=lambda _: None)
    fedavg = run_experiment_inprocess(cfg.model_copy(update={"algorithm": Algorithm.FEDAVG}), tmp_path / "avg",
                                      workers=2, progress=lambda _: None)
    models = {name: (tmp_path / name / "final_model.safetensors").read_bytes() for name in ("http", "local", "avg")}
    assert models["http"] == models["local"] != models["avg"]
    assert [e["received"] for e in over_http.history] == [3, 3]
    assert all(e[f"train_{FEDNOVA_NORM_METRIC}"] > 1 for e in local.history), local.history[-1].keys()
    assert fedavg.history[-1]["test_macro_f1"] >= 0
