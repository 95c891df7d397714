"""The FedMultimodal UCI-HAR partition: 21 subjects x 5 Dirichlet shards, a dev set cut along segments."""

from __future__ import annotations

import numpy as np
import pytest

from client_sdk.data.federated import FederatedDataset
from client_sdk.data.uci_har import (
    TEST_SUBJECTS,
    TRAIN_SUBJECTS,
    UciHar,
    dirichlet_label_partition,
    uci_har_federation,
    znormalize_windows,
)
from mfcpl.wire.schemas import ModalityKind


@pytest.fixture(scope="module")
def fed(uci: UciHar) -> FederatedDataset:
    return uci_har_federation(uci, alpha=0.1, seed=1)


def test_105_clients_of_at_least_5_windows(fed: FederatedDataset) -> None:
    assert len(fed.clients) == 105
    assert fed.client_names[:6] == ["s01_k0", "s01_k1", "s01_k2", "s01_k3", "s01_k4", "s03_k0"]
    assert sorted({c.subject for c in fed.clients}) == list(TRAIN_SUBJECTS)
    assert min(len(c) for c in fed.clients) >= 5
    assert fed.num_classes == 6 and len(fed.class_names) == 6
    assert [(m.name, m.kind, m.shape) for m in fed.modalities] == [
        ("acc", ModalityKind.TIMESERIES, [128, 3]),
        ("gyro", ModalityKind.TIMESERIES, [128, 3]),
    ]


def test_clients_dev_and_test_are_disjoint_and_cover_the_data(uci: UciHar, fed: FederatedDataset) -> None:
    client_rows = np.concatenate([c.indices for c in fed.clients])
    assert len(np.unique(client_rows)) == len(client_rows)
    assert fed.dev_indices is not None and fed.test_indices is not None
    assert not np.intersect1d(client_rows, fed.dev_indices).size
    everything = np.sort(np.concatenate([client_rows, fed.dev_indices]))
    np.testing.assert_array_equal(everything, np.flatnonzero(uci.split == "train"))
    for c in fed.clients:
        assert set(uci.subject[c.indices].tolist()) == {c.subject}
        assert c.data.labels.tolist() == uci.label[c.indices].tolist()
    # test = every window of the 9 official test subjects
    np.testing.assert_array_equal(fed.test_indices, np.flatnonzero(uci.split == "test"))
    assert sorted(set(uci.subject[fed.test_indices].tolist())) == list(TEST_SUBJECTS)
    assert len(fed.test) == 2_947 and fed.test.complete.all() and fed.dev.complete.all()


def test_dev_is_20_percent_per_subject_cut_along_segments(uci: UciHar, fed: FederatedDataset) -> None:
    client_rows = np.concatenate([c.indices for c in fed.clients])
    assert not np.intersect1d(uci.segment[client_rows], uci.segment[fed.dev_indices]).size
    for subject in TRAIN_SUBJECTS:
        rows = (uci.subject == subject) & (uci.split == "train")
        share = np.isin(np.flatnonzero(rows), fed.dev_indices).mean()
        assert 0.12 <= share <= 0.28, (subject, share)
    assert 0.19 <= len(fed.dev) / (len(fed.dev) + fed.num_train_samples) <= 0.215
    assert min(fed.dev.class_counts(6)) > 100  # every class is in the dev set


def test_inputs_are_z_normalised_windows(uci: UciHar, fed: FederatedDataset) -> None:
    shard = fed.client("s05_k2")
    np.testing.assert_allclose(shard.data.inputs["acc"], znormalize_windows(uci.acc[shard.indices]))
    np.testing.assert_allclose(fed.dev.inputs["gyro"], znormalize_windows(uci.gyro[fed.dev_indices]))


def test_alpha_controls_label_skew(uci: UciHar, fed: FederatedDataset) -> None:
    def mean_top_share(f: FederatedDataset) -> float:
        return float(np.mean([max(c.data.class_counts(6)) / len(c) for c in f.clients]))

    mild = uci_har_federation(uci, alpha=5.0, seed=1)
    assert len(mild.clients) == 105 and min(len(c) for c in mild.clients) >= 5
    assert mean_top_share(fed) > 0.6 > 0.4 > mean_top_share(mild)


def test_seeded_reproducible_and_slices_match_the_full_partition(uci: UciHar, fed: FederatedDataset) -> None:
    again = uci_har_federation(uci, alpha=0.1, seed=1)
    for a, b in zip(fed.clients, again.clients, strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(fed.dev_indices, again.dev_indices)
    other = uci_har_federation(uci, alpha=0.1, seed=2)
    assert any(not np.array_equal(a.indices, b.indices) for a, b in zip(fed.clients, other.clients, strict=True))

    small = uci_har_federation(uci, alpha=0.1, seed=1, subjects=[3, 1], test_subjects=[2], max_clients=7)
    assert small.client_names == fed.client_names[:7]
    for a, b in zip(small.clients, fed.clients[:7], strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
    assert set(uci.subject[small.test_indices].tolist()) == {2}
    assert set(uci.subject[small.dev_indices].tolist()) == {1, 3}


def test_bad_options_are_refused(uci: UciHar) -> None:
    with pytest.raises(ValueError, match="training subjects"):
        uci_har_federation(uci, subjects=[2])
    with pytest.raises(ValueError, match="test subjects"):
        uci_har_federation(uci, subjects=[1], test_subjects=[1])
    with pytest.raises(ValueError, match="max_clients"):
        uci_har_federation(uci, subjects=[1], max_clients=0)
    with pytest.raises(ValueError, match="cannot fill"):
        dirichlet_label_partition(np.zeros(9, dtype=np.int64), 2, 0.1, np.random.default_rng(0), min_size=5)


def test_dirichlet_partition_is_a_partition() -> None:
    labels = np.repeat(np.arange(4), 25)
    shards = dirichlet_label_partition(labels, 4, 0.5, np.random.default_rng(3), min_size=5)
    joined = np.sort(np.concatenate(shards))
    np.testing.assert_array_equal(joined, np.arange(100))
    assert min(len(s) for s in shards) >= 5
