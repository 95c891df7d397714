"""Partition schemes on their own and re-partitioning registered data sets (fsdd_av, UCI-HAR's refusals)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client_sdk.data.features import arrays_from_tensors
from client_sdk.data.federated import FederatedDataset
from client_sdk.data.fsdd import fsdd_av_federation
from client_sdk.data.partition import (
    MAX_REDRAWS,
    PartitionRequest,
    Pool,
    Scheme,
    dirichlet_label_partition,
    iid_split,
    partition_pool,
    scheme_rng,
)
from client_sdk.data.registry import load_client_data, load_federation
from tests.data.generated import GENERATED_LAYOUT, generated_tensors


@pytest.fixture(scope="module")
def fsdd(shared_data_dir: Path) -> FederatedDataset:
    return fsdd_av_federation(data_dir=shared_data_dir)


def _pool(n: int, groups: np.ndarray | None = None) -> Pool:
    rng = np.random.default_rng(0)
    data = arrays_from_tensors(generated_tensors(rng, rng.integers(0, 4, n)), GENERATED_LAYOUT)
    return Pool(data, np.arange(n) + 1000, groups)


def test_iid_split_is_near_equal_disjoint_and_seeded() -> None:
    parts = iid_split(103, 10, scheme_rng(1, Scheme.IID))
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    again = iid_split(103, 10, scheme_rng(1, Scheme.IID))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    with pytest.raises(ValueError, match="num_clients must lie in 1..5"):
        iid_split(5, 6, scheme_rng(0, Scheme.IID))


def test_dirichlet_redraws_are_bounded() -> None:
    labels = np.repeat(np.arange(4), 25)
    shards = dirichlet_label_partition(labels, 5, 0.5, scheme_rng(0, Scheme.DIRICHLET), min_size=8)
    assert min(len(s) for s in shards) >= 8 and sorted(np.concatenate(shards).tolist()) == list(range(100))
    # tiny alpha with a min_size near the mean: practically never satisfied -> a clear error after the bound
    with pytest.raises(ValueError, match=f"in {MAX_REDRAWS} tries; lower --num-clients or raise --alpha"):
        dirichlet_label_partition(labels, 10, 0.001, scheme_rng(0, Scheme.DIRICHLET), min_size=10,
                                  max_attempts=MAX_REDRAWS)


def test_group_names_fall_back_to_g_ids_and_indices_point_at_the_source() -> None:
    groups = np.array([2, 0, 2, 5, 0, 5, 5, 2])
    pool = _pool(8, groups)
    spec, _ = PartitionRequest.from_options({"partition": "group"})
    shards = partition_pool(pool, spec.resolve(pool))
    assert [s.name for s in shards] == ["g0", "g2", "g5"]
    assert shards[1].indices.tolist() == [1000, 1002, 1007]
    named = Pool(pool.data, pool.indices, groups, ("a", "b", "c", "d", "e", "f"), (), given=False)
    assert [s.name for s in partition_pool(named, spec.resolve(named))] == ["a", "c", "f"]


def test_request_from_options_keeps_the_rest_and_drops_none() -> None:
    request, rest = PartitionRequest.from_options(
        {"partition": "dirichlet", "num_clients": "12", "alpha": 0.3, "seed": 7, "frames": 50, "max_clients": None}
    )
    assert request == PartitionRequest(Scheme.DIRICHLET, 12, 0.3, None, 7, None, None)
    assert rest == {"frames": 50}


def test_fsdd_av_repartitioned_with_dirichlet(fsdd: FederatedDataset, shared_data_dir: Path) -> None:
    fed = load_federation("fsdd_av", shared_data_dir, partition="dirichlet", num_clients=12, alpha=0.3, seed=1)
    assert fed.client_names == [f"c{k}" for k in range(12)]
    assert min(len(c) for c in fed.clients) >= 5
    rows = np.concatenate([c.indices for c in fed.clients])
    assert sorted(rows.tolist()) == sorted(np.concatenate([c.indices for c in fsdd.clients]).tolist())
    assert len(fed.dev) == 300 and len(fed.test) == 300  # dev and test are fsdd_av's own
    np.testing.assert_array_equal(fed.dev_indices, fsdd.dev_indices)
    assert fed.options["partition"] == "dirichlet" and fed.options["alpha"] == 0.3 and fed.options["frames"] == 80
    # a sample keeps its features: row r of the source has the same image wherever it lands
    image_by_row = {int(r): x for c in fsdd.clients for r, x in zip(c.indices, c.data.inputs["image"], strict=True)}
    c5 = fed.client("c5")
    for r, x in zip(c5.indices[:20], c5.data.inputs["image"][:20], strict=True):
        np.testing.assert_array_equal(image_by_row[int(r)], x)
    # the node data source gets exactly that client
    node = load_client_data("fsdd_av:c5?partition=dirichlet&num_clients=12&alpha=0.3&seed=1", shared_data_dir)
    np.testing.assert_array_equal(node.indices, c5.indices)
    np.testing.assert_array_equal(node.data.inputs["audio"], c5.data.inputs["audio"])
    # default: the speakers, as before; seed is taken (for the missing-modality default seed)
    given = load_federation("fsdd_av", shared_data_dir, seed=1, max_clients=2)
    assert given.client_names == ["george", "jackson"] and given.options["partition"] == "given"


def test_fsdd_av_and_uci_har_refuse_what_does_not_apply(shared_data_dir: Path) -> None:
    with pytest.raises(ValueError, match="fsdd_av has its own dev set"):
        load_federation("fsdd_av", shared_data_dir, dev_fraction=0.1)
    with pytest.raises(ValueError, match="alpha applies to partition=dirichlet only"):
        load_federation("fsdd_av", shared_data_dir, alpha=0.1)
    with pytest.raises(ValueError, match="num_clients does not apply to partition=given"):
        load_federation("fsdd_av", shared_data_dir, num_clients=4)
    with pytest.raises(ValueError, match="fsdd_av: .*subjects"):
        load_federation("fsdd_av", shared_data_dir, subjects=[1])
    for option in ({"partition": "iid"}, {"num_clients": 10}):
        with pytest.raises(ValueError, match=r"uci_har has its own partition .* does not take \['(partition|num_cl)"):
            load_federation("uci_har", shared_data_dir, **option)


def test_uci_har_takes_min_size_and_none_values(shared_data_dir: Path) -> None:
    fed = load_federation("uci_har", shared_data_dir, subjects=[1], min_size=20, seed=2, partition=None, alpha=5.0)
    assert fed.options["min_shard_size"] == 20 and min(len(c) for c in fed.clients) >= 20
