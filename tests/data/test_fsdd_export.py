"""``python -m client_sdk.data fsdd_av export DIR``: the pooled folder gives fsdd_av's clients back by path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client_sdk.data.__main__ import main
from client_sdk.data.features import read_tensor_file
from client_sdk.data.federated import FederatedDataset
from client_sdk.data.fsdd import SPEAKERS
from client_sdk.data.registry import load_federation


@pytest.fixture(scope="module")
def exported(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("fsdd") / "fsdd_export"
    assert main(["fsdd_av", "export", str(dest), "--data-dir", str(shared_data_dir)]) == 0
    return dest


@pytest.fixture(scope="module")
def registered(shared_data_dir: Path) -> FederatedDataset:
    return load_federation("fsdd_av", shared_data_dir)


def _same(a: FederatedDataset, b: FederatedDataset) -> None:
    assert a.client_names == b.client_names
    pairs = [(x.data, y.data) for x, y in zip(a.clients, b.clients, strict=True)] + [(a.dev, b.dev), (a.test, b.test)]
    for x, y in pairs:
        np.testing.assert_array_equal(x.labels, y.labels)
        for m in ("audio", "image"):
            np.testing.assert_array_equal(x.inputs[m], y.inputs[m])
            np.testing.assert_array_equal(x.present[m], y.present[m])


def test_the_export_is_a_pooled_folder(exported: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == [
        "dev.safetensors", "layout.json", "test.safetensors", "train.safetensors"]
    layout = json.loads((exported / "layout.json").read_text())
    assert layout["num_classes"] == 10 and [m["name"] for m in layout["modalities"]] == ["audio", "image"]
    tensors, meta = read_tensor_file(exported / "train.safetensors")
    assert "client" not in tensors and tensors["group"].shape == (2400,)
    assert json.loads(meta["group_names"]) == list(SPEAKERS)
    assert np.bincount(tensors["group"]).tolist() == [400] * 6


def test_group_partition_of_the_export_equals_the_registered_fsdd_av(
    exported: Path, registered: FederatedDataset
) -> None:
    by_path = load_federation(str(exported), partition="group")
    _same(by_path, registered)
    assert by_path.options["layout"] == "pooled" and by_path.options["dev_fraction"] is None
    assert [c.subject for c in by_path.clients] == list(SPEAKERS)


def test_dirichlet_on_the_export_equals_dirichlet_on_the_registered_set(
    exported: Path, registered: FederatedDataset, shared_data_dir: Path
) -> None:
    options = {"partition": "dirichlet", "num_clients": 12, "alpha": 0.3, "seed": 1}
    by_path = load_federation(str(exported), **options)
    assert len(by_path.clients) == 12 and min(len(c) for c in by_path.clients) >= 5
    # pooling the registered speakers gives the same rows in the same order, so the same draw
    _same(by_path, load_federation("fsdd_av", shared_data_dir, **options))


def test_npz_export(tmp_path: Path, shared_data_dir: Path, registered: FederatedDataset) -> None:
    dest = tmp_path / "npz"
    assert main(["fsdd_av", "export", str(dest), "--data-dir", str(shared_data_dir), "--format", "npz"]) == 0
    assert (dest / "train.npz").is_file() and not (dest / "train.safetensors").exists()
    _same(load_federation(str(dest), partition="group"), registered)
    assert main(["fsdd_av", "export", str(tmp_path / "x"), "--data-dir", str(tmp_path)]) == 1  # no source data
