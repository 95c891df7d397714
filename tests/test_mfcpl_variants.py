"""The settings issue 12's search added: MFCPL's prototype fill of a missing modality (``training.mfcpl_fill``)
and modality dropout on complete samples (``training.modality_dropout``), on real UCI-HAR windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from client_sdk.algorithms import LocalRound, client_algorithm
from client_sdk.algorithms.mfcpl import synthesized_complete_prototypes
from client_sdk.losses import batch_prototype_clip_loss
from client_sdk.model import build_model
from client_sdk.prototypes import batch_tensors
from client_sdk.torch_io import prototypes_to_torch
from client_sdk.trainer import drop_one_modality, train_local
from mfcpl.wire.schemas import TrainingConfig
from mfcpl.wire.tensors import PrototypeTable
from tests.sdk.conftest import har_config, load_har_slice


def test_modality_dropout_drops_exactly_one_modality_of_complete_samples_only() -> None:
    torch.manual_seed(0)
    has = torch.rand(4000, 3) > 0.4
    names = ["a", "b", "c"]
    present = {m: has[:, j] for j, m in enumerate(names)}
    kept = torch.stack([v for v in drop_one_modality(present, 1.0).values()], dim=1)
    complete = has.all(dim=1)
    assert torch.equal(kept[~complete], has[~complete])  # incomplete samples are left alone
    assert (kept[complete].sum(dim=1) == 2).all()  # a complete sample loses exactly one
    share = (~kept[complete]).float().mean(dim=0)  # which one is uniform
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.05)
    half = torch.stack([v for v in drop_one_modality(present, 0.5).values()], dim=1)
    assert 0.4 < float((half[complete].sum(dim=1) == 2).float().mean()) < 0.6
    assert torch.equal(torch.stack(list(drop_one_modality(present, 0.0).values()), dim=1), has)


def test_modality_dropout_changes_training_and_stays_reproducible() -> None:
    data = load_har_slice(48, seed=5)
    plain_cfg = har_config("fedavg", batch_size=16)
    drop_cfg = har_config("fedavg", batch_size=16, modality_dropout=0.5)
    plain = train_local(build_model(plain_cfg, seed=0), data, plain_cfg, seed=0)
    first = train_local(build_model(drop_cfg, seed=0), data, drop_cfg, seed=0)
    again = train_local(build_model(drop_cfg, seed=0), data, drop_cfg, seed=0)
    name = next(iter(plain.weights))
    np.testing.assert_array_equal(first.weights[name], again.weights[name])
    assert any(not np.array_equal(first.weights[k], plain.weights[k]) for k in plain.weights)


def test_fill_is_refused_with_the_cross_modality_contrast() -> None:
    with pytest.raises(ValidationError, match="mfcpl_fill needs cmpc_target 'shared'"):
        TrainingConfig(mfcpl_fill=True, cmpc_target="modality")
    with pytest.raises(ValidationError):
        TrainingConfig(modality_dropout=1.0)


def _tables(cfg_fill: bool, hidden: int, proto_dim: int) -> dict[str, PrototypeTable]:
    rng = np.random.default_rng(0)
    width = hidden if cfg_fill else proto_dim
    covered = np.array([1, 1, 1, 0, 1, 1], np.float32) * 5  # class 3 has no complete prototype
    return {
        "shared": PrototypeTable(rng.normal(size=(6, proto_dim)).astype(np.float32), covered.copy()),
        "acc": PrototypeTable(rng.normal(size=(6, width)).astype(np.float32), covered.copy()),
        "gyro": PrototypeTable(rng.normal(size=(6, width)).astype(np.float32), covered.copy()),
    }


def test_fill_puts_the_class_prototype_where_a_modality_is_missing_and_sends_encoder_prototypes() -> None:
    cfg = har_config("mfcpl", mfcpl_fill=True)
    model = build_model(cfg, seed=0).eval()
    tables = _tables(True, model.hidden_dim, model.proto_dim)
    local = LocalRound(model, cfg, prototypes_to_torch(tables, 6), None)
    algorithm = client_algorithm("mfcpl")(local)
    labels = torch.tensor([0, 3, 5])
    fill = algorithm.fill(labels)
    assert fill is not None and set(fill) == {"acc", "gyro"}
    vectors, usable = fill["gyro"]
    torch.testing.assert_close(vectors[[0, 2]], torch.from_numpy(tables["gyro"].vectors[[0, 5]]))
    assert usable.tolist() == [True, False, True]  # no prototype of class 3: nothing stands in
    data = load_har_slice(3, seed=1)
    data.labels[:] = labels.numpy()
    data.present["gyro"][:] = False
    inputs, present = batch_tensors(model, data, np.arange(3))
    with torch.no_grad():
        filled = model(inputs, present, fill=fill).logits
        bare = model(inputs, present).logits
    assert not torch.allclose(filled[0], bare[0]) and not torch.allclose(filled[2], bare[2])
    torch.testing.assert_close(filled[1], bare[1])
    sent = algorithm.local_prototypes(load_har_slice(24, seed=2))
    assert sent["acc"].vectors.shape[1] == model.hidden_dim  # h^m, the width the fill needs
    assert sent["shared"].vectors.shape[1] == model.proto_dim
    off = client_algorithm("mfcpl")(LocalRound(model, har_config("mfcpl"), prototypes_to_torch(
        _tables(False, model.hidden_dim, model.proto_dim), 6), None))
    assert off.fill(labels) is None
    assert off.local_prototypes(load_har_slice(24, seed=2))["acc"].vectors.shape[1] == model.proto_dim


def test_a_filled_mfcpl_round_trains_with_finite_terms_and_differs_from_the_unfilled_one() -> None:
    data = load_har_slice(48, seed=5)
    data.present["gyro"][::2] = False
    results = {}
    for fill in (False, True):
        cfg = har_config("mfcpl", batch_size=16, mfcpl_fill=fill)
        model = build_model(cfg, seed=0)
        tables = _tables(fill, model.hidden_dim, model.proto_dim)
        results[fill] = train_local(model, data, cfg, global_prototypes=tables, seed=0)
        assert all(np.isfinite(v) for k, v in results[fill].metrics.items() if k.startswith("train_"))
    assert any(not np.array_equal(results[True].weights[k], results[False].weights[k]) for k in results[True].weights)


def test_synthesized_complete_prototypes_are_the_fused_per_modality_prototypes_of_the_received_model() -> None:
    cfg = har_config("mfcpl", mfcpl_fill=True, mfcpl_synthesize=True)
    model = build_model(cfg, seed=0).train()
    tables = _tables(True, model.hidden_dim, model.proto_dim)
    tables["acc"].counts[5] = 0  # class 5 lacks an acc prototype: it cannot be synthesised
    received = prototypes_to_torch(tables, 6)
    made = synthesized_complete_prototypes(model, received, "penultimate")
    assert made is not None and model.training  # the mode is restored
    assert made.coverage.tolist() == [True, True, True, False, True, False]
    # class 1 by hand: a model input with no real modality and both positions filled with class 1's prototypes
    model.eval()
    zeros = {m: torch.zeros(1, 128, 3) for m in ("acc", "gyro")}
    none = {m: torch.zeros(1, dtype=torch.bool) for m in ("acc", "gyro")}
    one = {m: (received[m].vectors[[1]], torch.ones(1, dtype=torch.bool)) for m in ("acc", "gyro")}
    with torch.no_grad():
        by_hand = model(zeros, none, fill=one).s[0]
    torch.testing.assert_close(made.vectors[1], by_hand, rtol=1e-5, atol=1e-6)
    # in the round: synthesised where possible, the received complete prototype elsewhere (class 5), none for 3
    algorithm = client_algorithm("mfcpl")(LocalRound(model, cfg, received, None))
    assert algorithm.targets.coverage.tolist() == [True, True, True, False, True, True]
    torch.testing.assert_close(algorithm.targets.vectors[5], received["shared"].vectors[5])
    torch.testing.assert_close(algorithm.targets.vectors[1], made.vectors[1])
    with pytest.raises(ValidationError, match="mfcpl_synthesize needs mfcpl_fill"):
        TrainingConfig(mfcpl_synthesize=True)


def test_synthesis_gives_prototype_terms_when_no_complete_prototype_was_received() -> None:
    data = load_har_slice(32, seed=4)
    data.present["gyro"][::2] = False
    data.present["acc"][1::2] = False  # no complete sample anywhere
    cfg = har_config("mfcpl", batch_size=16, mfcpl_fill=True, mfcpl_synthesize=True)
    model = build_model(cfg, seed=0)
    tables = _tables(True, model.hidden_dim, model.proto_dim)
    del tables["shared"]
    result = train_local(model, data, cfg, global_prototypes=tables, seed=0)
    assert result.metrics["train_cmpr"] > 0 and np.isfinite(result.metrics["train_cmpc"])
    assert "shared" not in result.prototypes  # no complete sample: nothing to send for that level


# ---- PmcmFL as its authors' code does it ---------------------------------------------------------------------


def test_batch_clip_loss_equals_the_in_batch_matrix_form() -> None:
    torch.manual_seed(0)
    features = torch.randn(9, 5, requires_grad=True)
    labels = torch.tensor([0, 2, 2, 1, 0, 3, 2, 1, 3])
    prototypes = torch.randn(4, 5)
    coverage = torch.tensor([True, True, True, False])  # class 3 has no prototype: its rows drop out
    got = batch_prototype_clip_loss(features, labels, prototypes, coverage, scale=1 / 0.07)
    keep = coverage[labels]
    f, y = features[keep], labels[keep]
    logits = (1 / 0.07) * f @ prototypes[y].T  # [n, n]: row i against the prototype of row j's class
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(len(y)))
    torch.testing.assert_close(got, expected)
    got.backward()
    assert features.grad is not None and torch.all(features.grad[~keep] == 0)
    none = batch_prototype_clip_loss(features, labels, prototypes, torch.zeros(4, dtype=torch.bool), 14.0)
    assert float(none.detach()) == 0.0


def test_pmcmfl_authors_code_sends_complete_sample_prototypes_with_a_fused_level_and_trains() -> None:
    data = load_har_slice(48, seed=5)
    data.present["gyro"][::3] = False
    cfg = har_config("pmcmfl", batch_size=16, pmcmfl_variant="authors_code")
    model = build_model(cfg, seed=0)
    sent = client_algorithm("pmcmfl")(LocalRound(model, cfg, {}, None)).local_prototypes(data)
    complete = data.present["acc"] & data.present["gyro"]
    assert set(sent) == {"shared", "acc", "gyro"}
    assert sent["shared"].vectors.shape[1] == model.fused_dim
    assert sent["acc"].vectors.shape[1] == model.hidden_dim
    assert float(sent["acc"].counts.sum()) == float(complete.sum())  # complete samples only, not all with acc
    tables = {level: PrototypeTable(np.zeros((6, p.vectors.shape[1]), np.float32), np.zeros(6, np.float32))
              for level, p in sent.items()}
    for level, p in sent.items():
        tables[level].vectors[p.classes] = p.vectors
        tables[level].counts[p.classes] = p.counts
    result = train_local(model, data, cfg, global_prototypes=tables, seed=0)
    assert result.metrics["train_pmcmfl_fused"] > 0 and np.isfinite(result.metrics["train_pmcmfl_acc"])
    simplified = har_config("pmcmfl", batch_size=16)
    plain = train_local(build_model(simplified, seed=0), data, simplified, seed=0)
    assert set(plain.prototypes) == {"acc", "gyro"} and "train_pmcmfl_fused" not in plain.metrics
