"""Feature standardisation: sums a client can share, their combination, the transform and the wire schema."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client_sdk.data.arrays import MultimodalArrays
from client_sdk.data.features import arrays_from_tensors
from client_sdk.data.federated import ClientShard, FederatedDataset
from client_sdk.data.normalize import (
    STD_FLOOR,
    combine_sums,
    feature_sums,
    federated_normalization,
    normalize_arrays,
    normalize_federation,
)
from mfcpl.wire.schemas import FederationCreate, ModalityKind, ModalitySpec, Normalization
from tests.data.generated import GENERATED_LAYOUT, generated_tensors

SPECS = list(GENERATED_LAYOUT.modalities)
TEXT = ModalitySpec(name="caption", kind=ModalityKind.TEXT, shape=[5])


def _arrays(seed: int, n: int) -> MultimodalArrays:
    rng = np.random.default_rng(seed)
    return arrays_from_tensors(generated_tensors(rng, rng.integers(0, 4, n)), GENERATED_LAYOUT)


def _valid(data: MultimodalArrays, name: str) -> np.ndarray:
    """By hand: the present samples' rows, without the all-zero (padding) rows for sequences."""
    x = data.inputs[name][data.present[name]].astype(np.float64)
    if x.ndim == 3:
        x = x.reshape(-1, x.shape[-1])
        x = x[np.any(x != 0, axis=1)]
    return x


def test_feature_sums_and_stats_equal_numpy_on_the_valid_rows() -> None:
    data = _arrays(1, 50)
    assert not data.present["stats"].all() and not data.present["motion"].all()
    sums = feature_sums(data, SPECS)
    stats = combine_sums([sums])
    for name in ("stats", "motion", "words"):
        rows = _valid(data, name)
        assert sums[name].count == len(rows) and sums[name].sum.dtype == np.float64
        np.testing.assert_allclose(sums[name].sum, rows.sum(axis=0), rtol=1e-12)
        np.testing.assert_allclose(sums[name].sum_squares, (rows**2).sum(axis=0), rtol=1e-12)
        np.testing.assert_allclose(stats[name].mean, rows.mean(axis=0), rtol=1e-9)
        np.testing.assert_allclose(stats[name].std, rows.std(axis=0), rtol=1e-7)
    # the motion padding is not counted: fewer rows than present samples x 20
    assert sums["motion"].count < data.present["motion"].sum() * 20
    assert 450 < np.mean(stats["stats"].mean) < 700 and 70 < np.mean(stats["stats"].std) < 130


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 60), min_size=0, max_size=5))
def test_combined_client_sums_equal_the_stats_of_the_concatenation(seed: int, cuts: list[int]) -> None:
    data = _arrays(seed, 60)
    bounds = [0, *sorted(cuts), 60]
    parts = [data.subset(np.arange(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    combined = combine_sums([feature_sums(p, SPECS) for p in parts])
    whole = combine_sums([feature_sums(data, SPECS)])
    assert set(combined) == set(whole)
    for name in whole:
        np.testing.assert_allclose(combined[name].mean, whole[name].mean, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(combined[name].std, whole[name].std, rtol=1e-7, atol=1e-9)
        assert combined[name].count == whole[name].count


def test_constant_features_get_the_std_floor_and_empty_modalities_no_entry() -> None:
    data = MultimodalArrays({"v": np.full((4, 3), 7.0, np.float32)}, {"v": np.ones(4, bool)}, np.zeros(4, np.int64))
    spec = [ModalitySpec(name="v", kind=ModalityKind.VECTOR, shape=[3])]
    stats = combine_sums([feature_sums(data, spec)])["v"]
    assert stats.mean == [7.0] * 3 and stats.std == [STD_FLOOR] * 3
    assert np.all(normalize_arrays(data, Normalization(mode="client"), spec).inputs["v"] == 0)
    absent = MultimodalArrays({"v": np.zeros((4, 3), np.float32)}, {"v": np.zeros(4, bool)}, np.zeros(4, np.int64))
    assert combine_sums([feature_sums(absent, spec)]) == {}


def _with_text(data: MultimodalArrays, seed: int) -> MultimodalArrays:
    ids = np.random.default_rng(seed).integers(1, 1000, (len(data), 5))
    return MultimodalArrays({**data.inputs, "caption": ids}, {**data.present, "caption": np.ones(len(data), bool)},
                            data.labels)


def _federation(parts: list[MultimodalArrays]) -> FederatedDataset:
    clients = [ClientShard(f"c{k}", p, np.arange(len(p))) for k, p in enumerate(parts)]
    return FederatedDataset("gen", clients, _with_text(_arrays(90, 30), 90), _with_text(_arrays(91, 30), 91),
                            [*SPECS, TEXT], 4, list(GENERATED_LAYOUT.class_names))


def test_absent_samples_and_padding_stay_zero_and_text_is_untouched() -> None:
    data = _with_text(_arrays(2, 40), 2)
    out = normalize_arrays(data, Normalization(mode="client"), [*SPECS, TEXT])
    assert out is not data and out.inputs["stats"].dtype == np.float32
    assert out.inputs["caption"] is data.inputs["caption"] and out.inputs["caption"].dtype == np.int64
    for name in ("stats", "motion", "words"):
        absent = ~data.present[name]
        assert np.all(out.inputs[name][absent] == 0)
    padding = ~np.any(data.inputs["motion"] != 0, axis=-1)  # [N, 20]
    assert padding.any() and np.all(out.inputs["motion"][padding] == 0)
    assert np.all(np.any(out.inputs["motion"][~padding] != 0, axis=-1))
    np.testing.assert_allclose(_valid(out, "stats").mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(_valid(out, "motion").std(axis=0), 1, atol=1e-4)
    assert normalize_arrays(data, Normalization(), [*SPECS, TEXT]) is data


def test_federated_and_client_modes_differ_as_expected() -> None:
    parts = [_arrays(10, 30), _arrays(11, 50), _arrays(12, 20)]
    parts[1] = MultimodalArrays({**parts[1].inputs, "stats": parts[1].inputs["stats"] * 2 + 300},
                                parts[1].present, parts[1].labels)  # one client on a different scale
    fed = _federation(parts)
    federated, norm = normalize_federation(fed, "federated")
    assert norm == federated_normalization(fed) and norm.mode == "federated"
    pooled = np.concatenate([_valid(c.data, "stats") for c in federated.clients])
    np.testing.assert_allclose(pooled.mean(axis=0), 0, atol=1e-4)
    assert abs(_valid(federated.clients[1].data, "stats").mean()) > 0.5  # a shifted client stays shifted
    # dev and test use the clients' transform, not their own statistics
    expected_dev = (fed.dev.inputs["stats"] - np.array(norm.stats["stats"].mean)) / np.array(norm.stats["stats"].std)
    present = fed.dev.present["stats"]
    np.testing.assert_allclose(federated.dev.inputs["stats"][present], expected_dev[present], rtol=1e-5, atol=1e-4)
    assert federated.options["normalization"] == "federated"

    per_client, client_norm = normalize_federation(fed, "client")
    assert client_norm == Normalization(mode="client")
    for c in per_client.clients + [ClientShard("dev", per_client.dev, np.arange(30))]:
        np.testing.assert_allclose(_valid(c.data, "stats").mean(axis=0), 0, atol=1e-4)
    assert normalize_federation(fed, "none") == (fed, Normalization())
    with pytest.raises(ValueError, match="none, federated or client"):
        normalize_federation(fed, "global")


def test_the_normalization_round_trips_through_the_wire_schema() -> None:
    fed = _federation([_arrays(20, 40), _arrays(21, 40)])
    _, norm = normalize_federation(fed, "federated")
    again = Normalization.model_validate(norm.model_dump(mode="json"))
    assert again == norm and again.stats is not None and set(again.stats) == {"stats", "motion", "words"}
    assert len(again.stats["motion"].mean) == 5 and len(again.stats["stats"].std) == 17
    config = FederationCreate(name="gen", num_classes=4, modalities=fed.modalities, normalization=again)
    assert FederationCreate.model_validate_json(config.model_dump_json()).normalization == norm
    # the recorded stats apply on a node exactly as in the simulation
    node = normalize_arrays(fed.clients[0].data, again, fed.modalities)
    sim, _ = normalize_federation(fed, "federated")
    np.testing.assert_array_equal(node.inputs["words"], sim.clients[0].data.inputs["words"])
    with pytest.raises(ValueError, match="normalization of 'stats'"):
        wrong = Normalization(mode="federated", stats={"stats": again.stats["motion"]})
        normalize_arrays(fed.clients[0].data, wrong, fed.modalities)
