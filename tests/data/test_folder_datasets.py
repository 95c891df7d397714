"""A user's own data set by folder path (pooled layout, generated here): every partition scheme, the dev cut,
node data sources, normalisation and the errors a newcomer meets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client_sdk.data.features import FeatureFormatError, read_tensor_file, save_feature_file
from client_sdk.data.federated import DatasetNotFoundError, FederatedDataset
from client_sdk.data.normalize import normalize_federation
from client_sdk.data.registry import load_client_data, load_federation
from mfcpl.wire.schemas import FederationCreate, Normalization
from tests.data.generated import GENERATED_LAYOUT, generated_tensors, write_generated_dataset


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("byo") / "gen"
    write_generated_dataset(folder)
    return folder


def _all_rows(fed: FederatedDataset) -> np.ndarray:
    return np.concatenate([c.indices for c in fed.clients])


def _check_disjoint_cover(fed: FederatedDataset, n: int = 240) -> None:
    rows = np.concatenate([_all_rows(fed), fed.dev_indices if fed.dev_indices is not None else []])
    assert len(rows) == len(set(rows.tolist())) == n  # every train row once: in a client or in dev


def test_group_partition_by_path(root: Path) -> None:
    fed = load_federation(str(root), partition="group", seed=3)
    assert fed.client_names == [f"site{g}" for g in range(6)]
    assert [(m.name, m.kind.value, m.shape) for m in fed.modalities] == [
        ("stats", "vector", [17]), ("motion", "timeseries", [20, 5]), ("words", "tokens", [7, 6])]
    assert fed.num_classes == 4 and fed.class_names == list(GENERATED_LAYOUT.class_names)
    _check_disjoint_cover(fed)
    assert 0.17 < len(fed.dev) / 240 < 0.23  # dev_fraction 0.2, cut per group and class
    assert len(fed.test) == 60
    assert fed.options["partition"] == "group" and fed.options["dev_fraction"] == 0.2 and fed.options["seed"] == 3
    # every sample of a client comes from its group (dev cut per group, so the split is by group)
    site2 = fed.client("site2")
    assert site2.subject == "site2" and len(site2) > 0
    # the loader zero-fills absent rows and pads / truncates sequences
    for data in [c.data for c in fed.clients] + [fed.dev, fed.test]:
        assert np.all(data.inputs["stats"][~data.present["stats"]] == 0)
        assert np.all(data.inputs["motion"][~data.present["motion"]] == 0)
        assert data.inputs["stats"].max() < 1e5  # the garbage behind stats.present = 0 is gone
    assert not all(c.data.present["stats"].all() for c in fed.clients)
    # the default partition of pooled data with a group column is group
    assert load_federation(str(root), seed=3).client_names == fed.client_names


def test_iid_and_dirichlet_by_path(root: Path) -> None:
    iid = load_federation(str(root), partition="iid", num_clients=8, seed=1)
    sizes = [len(c) for c in iid.clients]
    assert iid.client_names == [f"c{k}" for k in range(8)] and max(sizes) - min(sizes) <= 1
    _check_disjoint_cover(iid)
    again = load_federation(str(root), partition="iid", num_clients=8, seed=1)
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(iid.clients, again.clients, strict=True))
    other = load_federation(str(root), partition="iid", num_clients=8, seed=2)
    assert not np.array_equal(iid.clients[0].indices, other.clients[0].indices)

    dirichlet = load_federation(str(root), partition="dirichlet", num_clients=12, alpha=0.3, seed=1, min_size=4)
    assert len(dirichlet.clients) == 12 and min(len(c) for c in dirichlet.clients) >= 4
    _check_disjoint_cover(dirichlet)
    assert dirichlet.options | {"root": None} == {
        "root": None, "layout": "pooled", "partition": "dirichlet", "num_clients": 12, "alpha": 0.3, "min_size": 4,
        "seed": 1, "max_clients": None, "clients": None, "dev_fraction": 0.2}
    # label skew: with alpha 0.3 a typical client is dominated by one class, with iid it is not
    def top_share(fed: FederatedDataset) -> float:
        return float(np.mean([np.bincount(c.data.labels, minlength=4).max() / len(c) for c in fed.clients]))

    assert top_share(dirichlet) > top_share(iid) + 0.15
    assert len(load_federation(str(root), partition="dirichlet", num_clients=12, max_clients=5).clients) == 5


def test_dev_file_and_npz_give_the_same_data(tmp_path: Path) -> None:
    write_generated_dataset(tmp_path / "st", with_dev=True, seed=5)
    write_generated_dataset(tmp_path / "np", with_dev=True, seed=5, fmt="npz")
    a = load_federation(str(tmp_path / "st"), partition="iid", num_clients=4)
    b = load_federation(str(tmp_path / "np"), partition="iid", num_clients=4)
    assert len(a.dev) == 60 and a.dev_indices is None and a.options["dev_fraction"] is None
    assert a.num_train_samples == 240  # nothing cut: the dev file is the dev set
    pairs = [(x.data, y.data) for x, y in zip(a.clients, b.clients, strict=True)] + [(a.dev, b.dev), (a.test, b.test)]
    for data_x, data_y in pairs:
        for m in ("stats", "motion", "words"):
            np.testing.assert_array_equal(data_x.inputs[m], data_y.inputs[m])
            np.testing.assert_array_equal(data_x.present[m], data_y.present[m])
    assert load_federation(str(tmp_path / "np"), partition="group").client_names == [f"site{g}" for g in range(6)]
    with pytest.raises(ValueError, match="own dev set .*dev_fraction does not apply"):
        load_federation(str(tmp_path / "st"), dev_fraction=0.1)


def test_dev_fraction_is_recorded_and_used(root: Path) -> None:
    fed = load_federation(str(root), partition="group", dev_fraction=0.5, seed=0)
    assert fed.options["dev_fraction"] == 0.5 and 0.45 < len(fed.dev) / 240 < 0.55
    # stratified by class: each class's dev share is close to one half
    all_labels = np.concatenate([fed.dev.labels] + [c.data.labels for c in fed.clients])
    shares = np.bincount(fed.dev.labels, minlength=4) / np.bincount(all_labels, minlength=4)
    assert np.all(np.abs(shares - 0.5) < 0.1)
    assert len(load_federation(str(root), dev_fraction=0).dev) == 0
    with pytest.raises(ValueError, match=r"dev_fraction must lie in \[0, 1\)"):
        load_federation(str(root), dev_fraction=1.0)


@pytest.mark.parametrize(
    ("options", "shard"),
    [
        ({"partition": "dirichlet", "num_clients": 10, "alpha": 0.5, "seed": 1}, "c3"),
        ({"partition": "iid", "num_clients": 7, "seed": 4, "missing_rule": "sample", "missing_q": 0.6}, "c6"),
        ({"partition": "group", "seed": 2, "missing_rule": "client", "missing_q": 0.5}, "site4"),
    ],
)
def test_node_data_source_gives_the_simulated_shard(root: Path, options: dict[str, object], shard: str) -> None:
    fed = load_federation(str(root), **options)
    query = "&".join(f"{k}={v}" for k, v in options.items())
    node = load_client_data(f"{root}#{shard}?{query}")
    expected = fed.client(shard)
    assert node.name == shard
    np.testing.assert_array_equal(node.indices, expected.indices)
    for m in ("stats", "motion", "words"):
        np.testing.assert_array_equal(node.data.inputs[m], expected.data.inputs[m])
        np.testing.assert_array_equal(node.data.present[m], expected.data.present[m])
    np.testing.assert_array_equal(node.data.labels, expected.data.labels)


def test_normalisation_of_the_generated_data(root: Path) -> None:
    fed = load_federation(str(root), partition="dirichlet", num_clients=6, alpha=1.0, seed=1)
    raw_mean = np.concatenate([c.data.inputs["stats"][c.data.present["stats"]] for c in fed.clients]).mean()
    assert 450 < raw_mean < 700
    normed, normalization = normalize_federation(fed, "federated")
    pooled = np.concatenate([c.data.inputs["stats"][c.data.present["stats"]] for c in normed.clients])
    np.testing.assert_allclose(pooled.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(pooled.std(axis=0), 1, atol=1e-4)
    assert normalization.stats is not None and set(normalization.stats) == {"stats", "motion", "words"}
    assert abs(normalization.stats["stats"].mean[0] - raw_mean) < 60
    # the recorded normalization validates in a federation config of these modalities
    FederationCreate(name="gen", num_classes=4, modalities=fed.modalities, normalization=normalization)
    assert Normalization.model_validate_json(normalization.model_dump_json()) == normalization


def test_clear_errors_for_folder_data_sets(tmp_path: Path, root: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'foo' \(known: .*uci_har; or give a folder path"):
        load_federation("foo")
    with pytest.raises(DatasetNotFoundError, match="no data set folder"):
        load_federation(str(tmp_path / "nothing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError, match="no layout.json"):
        load_federation(str(empty))
    (empty / "layout.json").write_text(GENERATED_LAYOUT.to_json().replace('"stats"', '"Stats 1"'))
    bad_name = r"layout.json: invalid layout.json: modalities\[0\]\.name: String should match pattern"
    with pytest.raises(FeatureFormatError, match=bad_name) as info:
        load_federation(str(empty))
    assert "\n" not in str(info.value)
    (empty / "layout.json").write_text(GENERATED_LAYOUT.to_json())
    with pytest.raises(DatasetNotFoundError, match=r"no test set \(expected .*test.safetensors or .*test.npz\)"):
        load_federation(str(empty))
    save_feature_file(empty / "test.npz", {"label": np.zeros(2, np.int64)})
    with pytest.raises(DatasetNotFoundError, match="no training data"):
        load_federation(str(empty))
    # options that do not apply are refused, never ignored
    refusals = [
        ({"alpha": 0.5}, "alpha applies to partition=dirichlet only"),
        ({"partition": "iid", "alpha": 0.5}, "alpha applies to partition=dirichlet only"),
        ({"partition": "group", "num_clients": 3}, "num_clients does not apply to partition=group"),
        ({"partition": "given"}, "pooled .*no clients of its own"),
        ({"partition": "iid", "min_size": 3}, "min_size applies to partition=dirichlet only"),
        ({"subjects": [1, 2]}, r"unknown option\(s\) \['subjects'\]"),
        ({"shards_per_subject": 3}, r"unknown option\(s\) \['shards_per_subject'\]"),
        ({"partition": "random"}, "unknown partition 'random' .*iid, dirichlet, group, given"),
        ({"partition": "iid", "num_clients": 1000}, r"num_clients must lie in 1\.\.\d+"),
        ({"partition": "dirichlet", "num_clients": 10, "min_size": 30}, "cannot fill 10 shards"),
        ({"partition": "dirichlet", "alpha": 0}, "alpha must be > 0"),
        ({"num_clients": "many", "partition": "iid"}, "num_clients must be an integer"),
        ({"clients": ["site9"]}, r"unknown clients \['site9'\]"),
    ]
    for options, message in refusals:
        with pytest.raises(ValueError, match=message):
            load_federation(str(root), **options)


def test_pooled_data_without_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_generated_dataset(tmp_path / "g")
    tensors, _ = read_tensor_file(tmp_path / "g" / "train.safetensors")
    save_feature_file(tmp_path / "g" / "train.safetensors", {k: v for k, v in tensors.items() if k != "group"})
    monkeypatch.chdir(tmp_path)
    fed = load_federation("./g", seed=1)  # a relative path; default partition: iid into 10 clients
    assert fed.options["partition"] == "iid" and len(fed.clients) == 10
    assert [len(c) for c in fed.clients] == [len(c) for c in load_federation("g", seed=1).clients]  # existing folder
    with pytest.raises(ValueError, match="partition=group needs a group column"):
        load_federation("g", partition="group")


def test_per_client_and_client_column_layouts_take_partitions_and_cut_dev(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    root = tmp_path / "clients_layout"
    for name, n in {"alice": 30, "bob": 12, "carol": 25}.items():
        save_feature_file(root / "clients" / f"{name}.npz", generated_tensors(rng, rng.integers(0, 4, n)))
    save_feature_file(root / "test.npz", generated_tensors(rng, rng.integers(0, 4, 10)))
    (root / "layout.json").write_text(GENERATED_LAYOUT.to_json())
    fed = load_federation(str(root), seed=4)
    assert fed.client_names == ["alice", "bob", "carol"] and fed.options["layout"] == "clients"
    assert [len(c) for c in fed.clients] == [24, 10, 20] and len(fed.dev) == 13  # 20% of each client
    # a node reads only its own file and gets the same shard (the dev cut depends on its name only)
    node = load_client_data(f"{root}#bob?seed=4")
    np.testing.assert_array_equal(node.indices, fed.client("bob").indices)
    np.testing.assert_array_equal(node.data.inputs["words"], fed.client("bob").data.inputs["words"])
    pooled = load_federation(str(root), partition="dirichlet", num_clients=3, alpha=2.0, seed=4, min_size=3)
    assert pooled.client_names == ["c0", "c1", "c2"] and pooled.num_train_samples == 54

    one_file = tmp_path / "one_file"
    tensors = generated_tensors(rng, rng.integers(0, 4, 40))
    tensors["client"] = np.arange(40) % 4
    save_feature_file(one_file / "train.safetensors", tensors, client_names=["w", "x", "y", "z"])
    save_feature_file(one_file / "test.safetensors", generated_tensors(rng, rng.integers(0, 4, 10)))
    (one_file / "layout.json").write_text(GENERATED_LAYOUT.to_json())
    fed = load_federation(str(one_file), dev_fraction=0)
    assert fed.client_names == ["w", "x", "y", "z"] and [len(c) for c in fed.clients] == [10] * 4
    assert fed.client("x").indices.tolist() == list(range(1, 40, 4))
    assert len(load_federation(str(one_file), partition="iid", num_clients=5).clients) == 5
