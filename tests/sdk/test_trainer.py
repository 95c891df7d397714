"""The local trainer for every algorithm, local prototypes and evaluation, on small real UCI-HAR slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client_sdk.data import MultimodalArrays
from client_sdk.model import build_model
from client_sdk.prototypes import local_prototypes
from client_sdk.trainer import evaluate, train_local
from mfcpl.wire.schemas import FederationCreate
from mfcpl.wire.tensors import LocalPrototypes, PrototypeTable
from tests.sdk.conftest import har_config


def small_config(algorithm: str = "mfcpl", **training: object) -> FederationCreate:
    """A narrow model (d = 32) so the tests stay fast; the architecture is otherwise the UCI-HAR one."""
    cfg = har_config(algorithm, **training)
    cfg.model.hidden_dim = 32
    cfg.model.proj_dim = 16
    cfg.model.attention_dim = 64
    return cfg


def tables_from(protos: dict[str, LocalPrototypes], num_classes: int = 6) -> dict[str, PrototypeTable]:
    """What the coordinator would send back if this client were the only one."""
    tables = {}
    for level, p in protos.items():
        vectors = np.zeros((num_classes, p.vectors.shape[1]), np.float32)
        counts = np.zeros(num_classes, np.float32)
        vectors[p.classes] = p.vectors
        counts[p.classes] = p.counts
        tables[level] = PrototypeTable(vectors, counts)
    return tables


def drop(data: MultimodalArrays, modality: str, rows: np.ndarray) -> MultimodalArrays:
    mask = np.zeros(len(data), bool)
    mask[rows] = True
    return data.with_missing({modality: mask})


def weights_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_same_seed_gives_identical_weights_and_other_seed_differs(har_train):
    data = har_train.subset(np.arange(64))
    cfg = small_config("mfcpl")
    runs = [train_local(build_model(cfg, seed=0), data, cfg, seed=s) for s in (5, 5, 6)]
    assert weights_equal(runs[0].weights, runs[1].weights)
    assert runs[0].metrics["train_loss"] == runs[1].metrics["train_loss"]
    assert np.array_equal(runs[0].prototypes["shared"].vectors, runs[1].prototypes["shared"].vectors)
    assert not weights_equal(runs[0].weights, runs[2].weights)


def test_training_leaves_the_callers_rng_and_thread_count_alone(har_train):
    cfg = small_config("fedavg")
    threads = torch.get_num_threads()
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    train_local(build_model(cfg, seed=0), har_train.subset(np.arange(32)), cfg, seed=1, threads=1)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


EXPECTED_LEVELS = {
    "mfcpl": {"shared", "acc", "gyro"},
    "fedavg": set(),
    "fedprox": set(),
    "fedopt": set(),
    "fedproto": {"shared"},
    "pmcmfl": {"acc", "gyro"},
}
EXPECTED_TERMS = {
    "mfcpl": {"train_cmpr", "train_cmpc", "train_cma"},  # + train_proto_ce in the normalized space
    "fedprox": {"train_prox"},
    "fedproto": {"train_fedproto"},
    "pmcmfl": {"train_pmcmfl"},
    "fedavg": set(),
    "fedopt": set(),
}


@pytest.mark.parametrize("algorithm", list(EXPECTED_LEVELS))
def test_every_algorithm_trains_changes_weights_and_uses_received_prototypes(algorithm, har_train):
    data = drop(har_train.subset(np.arange(48)), "gyro", np.arange(0, 48, 4))  # some samples lack gyro
    cfg = small_config(algorithm)
    model = build_model(cfg, seed=0)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    first = train_local(model, data, cfg, seed=0)
    assert not all(torch.equal(before[k], torch.from_numpy(v)) for k, v in first.weights.items())
    assert set(first.prototypes) == EXPECTED_LEVELS[algorithm]
    assert first.num_samples == 48
    second = train_local(model, data, cfg, global_prototypes=tables_from(first.prototypes), seed=1)
    assert EXPECTED_TERMS[algorithm] <= set(second.metrics)
    assert all(np.isfinite(v) for v in second.metrics.values())
    assert all(np.isfinite(w).all() for w in second.weights.values())
    if algorithm == "mfcpl":
        assert second.metrics["train_cmpc"] > 0 and second.metrics["train_cma"] > 0


def test_prototype_terms_start_only_once_complete_prototypes_exist(har_train):
    data = har_train.subset(np.arange(32))
    cfg = small_config("mfcpl")
    model = build_model(cfg, seed=0)
    assert "train_cmpr" not in train_local(model, data, cfg, seed=0).metrics
    empty = {"shared": PrototypeTable(np.zeros((6, 16), np.float32), np.zeros(6, np.float32))}
    assert "train_cmpr" not in train_local(model, data, cfg, global_prototypes=empty, seed=0).metrics


def test_client_without_gyro_never_touches_the_gyro_encoder(har_train):
    data = drop(har_train.subset(np.arange(40)), "gyro", np.arange(40))
    cfg = small_config("mfcpl")
    model = build_model(cfg, seed=0)
    first = train_local(model, data, cfg, seed=0)
    assert set(first.prototypes) == {"acc"}  # no complete sample -> no shared level
    before = {k: v.copy() for k, v in first.weights.items()}
    protos = tables_from(first.prototypes)
    protos["shared"] = PrototypeTable(np.ones((6, model.proto_dim), np.float32), np.ones(6, np.float32))
    after = train_local(model, data, cfg, global_prototypes=protos, seed=1).weights
    gyro = [k for k in after if k.startswith(("encoders.gyro.", "g2.gyro."))]
    assert gyro and all(np.array_equal(before[k], after[k]) for k in gyro)
    assert not np.array_equal(before["encoders.acc.rnn.weight_hh_l0"], after["encoders.acc.rnn.weight_hh_l0"])


def test_samples_without_any_modality_are_skipped_and_an_empty_client_is_refused(har_train):
    data = har_train.subset(np.arange(20))
    partial = drop(drop(data, "acc", np.arange(5)), "gyro", np.arange(3))  # rows 0-2 have nothing
    cfg = small_config("fedavg")
    assert train_local(build_model(cfg, seed=0), partial, cfg, seed=0).num_samples == 17
    nothing = drop(drop(data, "acc", np.arange(20)), "gyro", np.arange(20))
    with pytest.raises(ValueError, match="no training sample"):
        train_local(build_model(cfg, seed=0), nothing, cfg, seed=0)


def test_config_and_model_must_agree_on_the_prototype_space(har_train):
    model = build_model(small_config("mfcpl"), seed=0)
    with pytest.raises(ValueError, match="prototype_space"):
        train_local(model, har_train.subset(np.arange(8)), small_config(model={"prototype_space": "projection"}))


def test_fedprox_stays_closer_to_the_global_model_than_fedavg(har_train):
    data = har_train.subset(np.arange(48))
    start = build_model(small_config(), seed=0).state_dict()

    def drift(algorithm: str, mu: float) -> float:
        cfg = small_config(algorithm, prox_mu=mu, local_epochs=2)
        model = build_model(cfg, seed=0)
        weights = train_local(model, data, cfg, seed=0).weights
        return sum(float(((torch.from_numpy(w) - start[k]) ** 2).sum()) for k, w in weights.items())

    assert drift("fedprox", 5.0) < drift("fedavg", 0.0)


def test_local_prototypes_use_complete_samples_for_shared_and_present_ones_per_modality(har_train):
    data = drop(har_train.subset(np.arange(60)), "acc", np.arange(0, 60, 3))
    model = build_model(small_config(), seed=0)
    protos = local_prototypes(model, data)
    complete = data.complete
    expected_shared = np.bincount(data.labels[complete], minlength=6)
    assert dict(zip(protos["shared"].classes.tolist(), protos["shared"].counts.tolist(), strict=True)) == {
        k: float(c) for k, c in enumerate(expected_shared) if c
    }
    assert protos["gyro"].counts.sum() == 60 and protos["acc"].counts.sum() == 40
    assert protos["shared"].vectors.dtype == np.float32 and protos["shared"].classes.dtype == np.int64
    everything = local_prototypes(model, data, ["shared"], shared_feature="penultimate", shared_from="all")
    assert everything["shared"].counts.sum() == 60 and everything["shared"].vectors.shape[1] == 64
    with pytest.raises(ValueError, match="unknown prototype levels"):
        local_prototypes(model, data, ["audio"])


def test_loss_goes_down_over_a_few_epochs_on_real_data(har_train):
    cfg = small_config("fedavg", local_epochs=6)
    cfg.model.dropout = 0.0
    model = build_model(cfg, seed=0)
    before = evaluate(model, har_train, 6)["loss"]
    train_local(model, har_train, cfg, seed=0)
    after = evaluate(model, har_train, 6)["loss"]
    assert after < before - 0.01


def test_evaluate_reports_fractions_and_loss(har_test):
    model = build_model(small_config(), seed=0)
    metrics = evaluate(model, har_test, 6)
    assert set(metrics) == {"accuracy", "macro_f1", "uar", "auc", "loss"}
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("accuracy", "macro_f1", "uar", "auc"))
    with pytest.raises(ValueError, match="num_classes"):
        evaluate(model, har_test, 5)


def test_mfcpl_prototype_source_all_builds_the_shared_level_from_every_sample(har_train):
    data = drop(har_train.subset(np.arange(30)), "gyro", np.arange(0, 30, 2))  # 15 complete, 15 acc only
    complete = train_local(build_model(small_config(), seed=0), data, small_config(), seed=0).prototypes
    assert complete["shared"].counts.sum() == 15
    cfg = small_config(prototype_source="all")
    everything = train_local(build_model(cfg, seed=0), data, cfg, seed=0).prototypes
    assert everything["shared"].counts.sum() == 30
    with pytest.raises(ValueError, match="prototype_source"):
        bad = small_config(prototype_source="some")
        train_local(build_model(bad, seed=0), data, bad, seed=0)


def test_the_cosine_head_term_exists_only_in_the_normalized_space(har_train):
    data = har_train.subset(np.arange(16))
    for space, expected in (("normalized", True), ("penultimate", False)):
        cfg = small_config(model={"prototype_space": space})
        metrics = train_local(build_model(cfg, seed=0), data, cfg, seed=0).metrics
        assert ("train_proto_ce" in metrics) is expected, space
