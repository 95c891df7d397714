"""FLISM as a plug-in on both sides: its loss terms and entropy against hand-computed values, its quality-weighted
aggregation against the written-out formula, and a short federation on real UCI-HAR that differs from FedAvg."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from client_sdk.algorithms import LocalRound, client_algorithm, registered
from client_sdk.algorithms import flism as client_flism
from client_sdk.algorithms.flism import (
    FLISM_ENTROPY_METRIC,
    Flism,
    distillation_loss,
    dropout_view_masks,
    prediction_entropy,
    supcon_loss,
)
from client_sdk.model import build_model
from client_sdk.prototypes import batch_tensors
from client_sdk.trainer import train_local
from coordinator.aggregation import aggregate_round
from coordinator.strategies import flism as server_flism
from coordinator.strategies import registered as registered_strategies
from coordinator.strategies import strategy_for
from mfcpl.experiments.config import ExperimentConfig
from mfcpl.experiments.runner import run_experiment_inprocess
from mfcpl.wire.schemas import Algorithm, FederationCreate, TrainingConfig
from mfcpl.wire.tensors import Update, encode_update
from tests.sdk.conftest import har_config, load_har_slice

DATA_DIR = str(Path(__file__).resolve().parents[1].parent / "shared" / "data")


def test_flism_is_registered_on_both_sides_with_typed_documented_settings() -> None:
    assert Algorithm.FLISM.value == "flism"
    assert "flism" in registered() and "flism" in registered_strategies()
    assert client_algorithm("flism") is Flism
    assert isinstance(strategy_for("flism"), server_flism.Flism)
    assert client_flism.FLISM_ENTROPY_METRIC == server_flism.FLISM_ENTROPY_METRIC
    fields = {k: f for k, f in TrainingConfig.model_fields.items() if k.startswith("flism_")}
    assert len(fields) >= 9 and all(f.description for f in fields.values())
    with pytest.raises(ValueError):
        TrainingConfig.model_validate({"flism_views": "both"})


# ---- loss terms on small tensors ----------------------------------------------------------------------------


def test_supcon_matches_the_hand_computed_value() -> None:
    # Views: s0 = (3, 0), s1 = (0, 1) (view 0 of samples 0, 1); a0 = (1, 0) (view 1 of sample 0; sample 1's is
    # invalid). Labels 0, 1. Normalised: s0.a0 = 1, the rest 0. With t = 0.5: anchors s0 and a0 each have one
    # positive (the other) with log-prob 2 - log(e^2 + 1); s1 has none and is left out.
    features = torch.tensor([[[3.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [5.0, 5.0]]])
    valid = torch.tensor([[True, True], [True, False]])
    labels = torch.tensor([0, 1])
    expected = -(0.5 / 0.25) * (2 - math.log(math.exp(2) + 1))
    got = supcon_loss(features, labels, valid, temperature=0.5, base_temperature=0.25)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_supcon_gradients_are_finite_and_an_empty_contrast_is_a_connected_zero() -> None:
    torch.manual_seed(0)
    features = torch.randn(3, 8, 5, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    valid = torch.rand(3, 8) > 0.3
    valid[0] = True
    supcon_loss(features, labels, valid, 0.1, 0.07).backward()
    assert features.grad is not None and torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    lone = torch.randn(2, 2, 4, requires_grad=True)  # one valid view per class: no positive anywhere
    value = supcon_loss(lone, torch.tensor([0, 1]), torch.tensor([[True, True], [False, False]]), 0.1, 0.07)
    value.backward()
    assert float(value.detach()) == 0 and lone.grad is not None and float(lone.grad.abs().sum()) == 0


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_distillation_is_t2_times_the_kl_from_the_teacher(temperature: float) -> None:
    student = torch.tensor([[0.0, 0.0], [1.0, -1.0]], requires_grad=True)
    teacher = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])

    def kl(g: list[float], s: list[float]) -> float:
        p = [math.exp(x / temperature) for x in g]
        q = [math.exp(x / temperature) for x in s]
        p, q = [x / sum(p) for x in p], [x / sum(q) for x in q]
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))

    expected = temperature**2 * (kl([math.log(3.0), 0.0], [0.0, 0.0]) + kl([0.0, 0.0], [1.0, -1.0])) / 2
    got = distillation_loss(student, teacher, temperature)
    assert float(got.detach()) == pytest.approx(expected, rel=1e-6)
    got.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert float(distillation_loss(teacher, teacher, temperature)) == pytest.approx(0.0, abs=1e-7)


def test_prediction_entropy() -> None:
    got = prediction_entropy(torch.tensor([[0.0, 0.0, 0.0], [math.log(3.0), 0.0, -1e4]]))
    expected_second = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert got.tolist() == pytest.approx([math.log(3.0), expected_second], rel=1e-6)


def test_dropout_view_drops_a_nonempty_strict_subset_of_the_present_modalities() -> None:
    torch.manual_seed(1)
    names = ["a", "b", "c"]
    has = torch.rand(200, 3) > 0.3
    present = {m: has[:, j] for j, m in enumerate(names)}
    keep, augmented = dropout_view_masks(present, names)
    kept = torch.stack([keep[m] for m in names], dim=1)
    assert torch.equal(augmented, has.sum(1) >= 2)
    assert not (kept & ~has).any()  # only present modalities are kept
    assert (kept[augmented].sum(1) >= 1).all() and (kept[augmented].sum(1) < has[augmented].sum(1)).all()
    assert torch.equal(kept[~augmented], has[~augmented])
    three = has.sum(1) == 3  # with three present, one or two are dropped, both happen
    assert {int(v) for v in kept[three].sum(1)} == {1, 2}


# ---- the client on real data --------------------------------------------------------------------------------


def test_the_teacher_is_the_received_model_frozen() -> None:
    cfg = har_config("flism")
    model = build_model(cfg, seed=0).eval()
    data = load_har_slice(8, seed=2)
    algorithm = Flism(LocalRound(model, cfg, {}, None))
    assert algorithm.teacher is not None
    assert all(not p.requires_grad for p in algorithm.teacher.parameters())
    inputs, present = batch_tensors(model, data, np.arange(8))
    with torch.no_grad():
        torch.testing.assert_close(algorithm.teacher(inputs, present).logits, model(inputs, present).logits)
    algorithm.local_prototypes(data)
    assert not model._forward_pre_hooks  # the capture hook is gone once training ends


@pytest.mark.parametrize("views", ["dropout", "modalities"])
def test_client_trains_with_finite_terms_and_reports_its_entropy(views: str) -> None:
    data = load_har_slice(48, seed=5)
    data.present["gyro"][::3] = False  # some samples have one modality only
    cfg = har_config("flism", batch_size=16, flism_views=views)
    model = build_model(cfg, seed=0)
    result = train_local(model, data, cfg, seed=0)
    assert not model._forward_pre_hooks
    m = result.metrics
    assert 0 < m[FLISM_ENTROPY_METRIC] <= math.log(6) + 1e-6
    assert math.isfinite(m["train_flism_supcon"]) and m["train_flism_supcon"] > 0
    assert math.isfinite(m["train_flism_kd"]) and m["train_flism_kd"] >= 0
    assert all(np.isfinite(w).all() for w in result.weights.values() if w.dtype.kind == "f")
    assert result.prototypes == {}
    # the reported entropy is that of the trained model on the training samples
    logits = client_flism.embed(model, data).logits
    assert m[FLISM_ENTROPY_METRIC] == pytest.approx(float(prediction_entropy(torch.from_numpy(logits)).mean()),
                                                   rel=1e-5)
    off = har_config("flism", batch_size=16, flism_lambda_kd=0.0, flism_lambda_supcon=0.0)
    plain = train_local(build_model(off, seed=0), data, off, seed=0)
    avg = har_config("fedavg", batch_size=16)
    fedavg = train_local(build_model(avg, seed=0), data, avg, seed=0)
    for name, w in fedavg.weights.items():  # with both terms off, the client is FedAvg's
        np.testing.assert_array_equal(plain.weights[name], w)


# ---- the server ---------------------------------------------------------------------------------------------


def _config(**training: object) -> FederationCreate:
    return FederationCreate.model_validate({"name": "t", "algorithm": "flism", "num_classes": 3, "training": training,
                                            "modalities": [{"name": "x", "kind": "vector", "shape": [4]}]})


def _body(weights: dict[str, np.ndarray], num_samples: int, entropy: float | None) -> bytes:
    metrics = {} if entropy is None else {FLISM_ENTROPY_METRIC: entropy}
    return encode_update(Update(weights=weights, num_samples=num_samples, base_model_version=0, metrics=metrics))


@pytest.mark.parametrize("weighting", ["entropy", "entropy_x_samples"])
def test_quality_weighting_matches_the_written_out_formula(weighting: str) -> None:
    rng = np.random.default_rng(0)
    clients: list[tuple[dict[str, np.ndarray], int, float]] = [
        ({"w": rng.normal(size=(5, 3)).astype(np.float32), "n": np.array([4], np.int64)}, n, h)
        for n, h in ((10, 0.2), (30, 1.5), (60, 0.0))]
    dtypes: dict[str, np.dtype] = {"w": np.dtype(np.float32), "n": np.dtype(np.int64)}
    sources = [(_body(w, n, h), float(n)) for w, n, h in clients]
    floor = 0.05
    got = aggregate_round(_config(flism_weighting=weighting, flism_entropy_floor=floor), sources, dtypes).weights
    # q_i = 1 / max(H_i, floor), times n_i with entropy_x_samples; new = sum q_i w_i / sum q_i
    q = [(n if weighting == "entropy_x_samples" else 1) / max(h, floor) for _, n, h in clients]
    expected = np.sum([qi * w["w"] for qi, (w, _, _) in zip(q, clients, strict=True)], axis=0) / sum(q)
    np.testing.assert_allclose(got["w"], expected, rtol=1e-5, atol=1e-6)
    assert got["n"].dtype == np.int64 and int(got["n"][0]) == 4
    assert server_flism.quality_weights([0.2, 1.5, 0.0], [10, 30, 60], floor, False) == pytest.approx(
        [x / sum([5.0, 1 / 1.5, 20.0]) for x in [5.0, 1 / 1.5, 20.0]])
    fedavg = aggregate_round(_config().model_copy(update={"algorithm": Algorithm.FEDAVG}), sources, dtypes).weights
    assert not np.allclose(got["w"], fedavg["w"])


def test_equal_entropies_give_the_plain_mean_and_a_missing_entropy_fails_the_round() -> None:
    w = [{"w": np.full((2, 2), v, np.float32)} for v in (1.0, 4.0)]
    dtypes: dict[str, np.dtype] = {"w": np.dtype(np.float32)}
    got = aggregate_round(_config(), [(_body(w[0], 10, 0.7), 10.0), (_body(w[1], 90, 0.7), 90.0)], dtypes).weights
    np.testing.assert_allclose(got["w"], 2.5)  # the paper's weights ignore sample counts
    with pytest.raises(ValueError, match=FLISM_ENTROPY_METRIC):
        aggregate_round(_config(), [(_body(w[0], 5, None), 5.0)], dtypes)


# ---- a short federation -------------------------------------------------------------------------------------


def test_flism_federation_runs_in_process_and_differs_from_fedavg(tmp_path: Path) -> None:
    base = {"subjects": [1, 3, 5], "shards_per_subject": 1, "alpha": 5.0, "clients_per_round": 3, "rounds": 2,
            "eval_every": 1, "data_dir": DATA_DIR, "seed": 3, "missing_rate": 0.5, "training": {"local_epochs": 1}}
    cfg = ExperimentConfig.model_validate({**base, "algorithm": "flism"})
    result = run_experiment_inprocess(cfg, tmp_path / "flism", workers=1, progress=lambda _: None)
    run_experiment_inprocess(cfg.model_copy(update={"algorithm": Algorithm.FEDAVG}), tmp_path / "avg", workers=1,
                             progress=lambda _: None)
    models = {name: (tmp_path / name / "final_model.safetensors").read_bytes() for name in ("flism", "avg")}
    assert models["flism"] != models["avg"]
    assert len(result.history) == 2
    for entry in result.history:
        assert 0 < entry[f"train_{FLISM_ENTROPY_METRIC}"] <= math.log(6) + 1e-6
        assert math.isfinite(entry["train_flism_kd"]) and math.isfinite(entry["train_flism_supcon"])
    assert 0 <= result.history[-1]["test_macro_f1"] <= 1
