"""Missing-modality simulation: client level and sample level, seeded, with a summary."""

from __future__ import annotations

import numpy as np
import pytest

from client_sdk.data.arrays import MultimodalArrays
from client_sdk.data.federated import ClientShard, FederatedDataset
from client_sdk.data.missing import MissingSummary, simulate_missing, summarize_missing
from client_sdk.data.uci_har import UciHar, uci_har_federation
from mfcpl.wire.schemas import ModalityKind, ModalitySpec

MODS = ("a", "b", "c")


def _arrays(n: int, rng: np.random.Generator) -> MultimodalArrays:
    inputs = {m: rng.normal(size=(n, 4)).astype(np.float32) + 1.0 for m in MODS}
    return MultimodalArrays(inputs, {m: np.ones(n, dtype=bool) for m in MODS}, rng.integers(0, 3, n))


def _synthetic(num_clients: int = 2000, per_client: int = 4) -> FederatedDataset:
    rng = np.random.default_rng(0)
    clients = [
        ClientShard(name=f"c{i}", data=_arrays(per_client, rng), indices=np.arange(per_client))
        for i in range(num_clients)
    ]
    return FederatedDataset(
        name="synthetic",
        clients=clients,
        dev=_arrays(10, rng),
        test=_arrays(10, rng),
        modalities=[ModalitySpec(name=m, kind=ModalityKind.VECTOR, shape=[4]) for m in MODS],
        num_classes=3,
        class_names=["x", "y", "z"],
    )


@pytest.fixture(scope="module")
def synthetic() -> FederatedDataset:
    return _synthetic()


def test_client_level_rates_and_all_or_nothing(synthetic: FederatedDataset) -> None:
    q = 0.5
    out, summary = simulate_missing(synthetic, "client", q, seed=7)
    lost = np.array([[not c.data.present[m].any() for m in MODS] for c in out.clients])
    for c in out.clients:  # the whole client loses a modality, or none of it
        for m in MODS:
            assert c.data.present[m].all() or not c.data.present[m].any()
            np.testing.assert_array_equal(c.data.inputs[m][~c.data.present[m]], 0.0)
    np.testing.assert_allclose(lost.mean(axis=0), q, atol=0.04)
    assert abs(lost.all(axis=1).mean() - q**3) < 0.03
    assert summary.clients_empty == int(lost.all(axis=1).sum())
    assert summary.clients_complete == int((~lost).all(axis=1).sum())
    assert summary.clients_complete + summary.clients_partial + summary.clients_empty == 2000
    assert summary.clients_can_train == sum(c.can_train for c in out.clients)
    assert summary.samples_missing == {m: 4 * int(lost[:, j].sum()) for j, m in enumerate(MODS)}


def test_sample_level_never_removes_every_modality(synthetic: FederatedDataset) -> None:
    q = 0.6
    out, summary = simulate_missing(synthetic, "sample", q, seed=3)
    present = np.concatenate([np.stack([c.data.present[m] for m in MODS], axis=1) for c in out.clients])
    n_missing = (~present).sum(axis=1)
    assert n_missing.max() == 1  # exactly one modality goes from a hit sample
    assert abs((n_missing == 1).mean() - q) < 0.02
    np.testing.assert_allclose((~present).mean(axis=0), q / 3, atol=0.02)  # uniform over modalities
    assert summary.samples_empty == 0 and summary.clients_empty == 0
    assert summary.samples_partial == int((n_missing == 1).sum())

    everything, summary_all = simulate_missing(synthetic, "sample", 1.0, seed=3)
    assert summary_all.samples_complete == 0 and summary_all.samples_empty == 0
    # restricted to one modality, only that one goes
    only_a, _ = simulate_missing(synthetic, "sample", 1.0, seed=3, modalities=["a"])
    assert all(not c.data.present["a"].any() and c.data.complete.sum() == 0 for c in only_a.clients[:20])
    assert all(c.data.present["b"].all() and c.data.present["c"].all() for c in only_a.clients)


def test_sample_level_keeps_the_last_modality() -> None:
    rng = np.random.default_rng(1)
    data = _arrays(50, rng).with_missing({"a": np.ones(50, bool), "b": np.arange(50) < 25})
    fed = _synthetic(1, 1).with_clients([ClientShard("solo", data, np.arange(50))])
    out, _ = simulate_missing(fed, "sample", 1.0, seed=0)
    present = np.stack([out.clients[0].data.present[m] for m in MODS], axis=1)
    assert present.sum(axis=1).min() == 1
    assert present[25:].sum() == 25  # samples with only "c" left keep it


def _mask(shard: ClientShard) -> np.ndarray:
    return np.stack([shard.data.present[m] for m in MODS])


def test_dev_test_untouched_and_seeded(synthetic: FederatedDataset) -> None:
    for rule in ("client", "sample"):
        a, sa = simulate_missing(synthetic, rule, 0.8, seed=11)
        b, sb = simulate_missing(synthetic, rule, 0.8, seed=11)
        c, _ = simulate_missing(synthetic, rule, 0.8, seed=12)
        assert a.dev is synthetic.dev and a.test is synthetic.test
        assert a.dev.complete.all() and a.test.complete.all()
        assert sa == sb
        masks_a, masks_b, masks_c = ([_mask(x) for x in f.clients] for f in (a, b, c))
        assert all(np.array_equal(p, r) for p, r in zip(masks_a, masks_b, strict=True))
        assert any(not np.array_equal(p, r) for p, r in zip(masks_a, masks_c, strict=True))
        # a client's draw depends on its name, not on which other clients are present
        part, _ = simulate_missing(synthetic.with_clients(synthetic.clients[500:510]), rule, 0.8, seed=11)
        for x, full in zip(part.clients, a.clients[500:510], strict=True):
            for m in MODS:
                np.testing.assert_array_equal(x.data.present[m], full.data.present[m])
    assert synthetic.clients[0].data.complete.all()  # the input federation is not modified


def test_rule_none_and_bad_arguments(synthetic: FederatedDataset) -> None:
    same, summary = simulate_missing(synthetic, "none", 0.9, seed=0)
    assert summary.clients_complete == 2000 and summary.samples_complete == 8000
    with pytest.raises(ValueError, match="q must"):
        simulate_missing(synthetic, "client", 1.5, seed=0)
    with pytest.raises(ValueError):
        simulate_missing(synthetic, "everything", 0.5, seed=0)
    with pytest.raises(ValueError, match="unknown modalities"):
        simulate_missing(synthetic, "client", 0.5, seed=0, modalities=["zz"])


def test_summary_prints_its_counts() -> None:
    text = str(summarize_missing(_synthetic(3, 2).clients, "client", 0.0, 5))
    assert "clients 3 = 3 complete + 0 partial + 0 empty (3 can train)" in text
    assert "samples 6 = 6 complete" in text


# measured on the real partition and written down in docs/data.md; seeds 1..5, client level, q = 0.8
EXPECTED_Q08 = {1: (5, 35), 2: (6, 40), 3: (2, 46), 4: (6, 42), 5: (9, 50)}


def test_client_level_q08_on_the_real_partition(uci: UciHar) -> None:
    results: dict[int, MissingSummary] = {}
    for seed in EXPECTED_Q08:
        fed = uci_har_federation(uci, alpha=0.1, seed=seed)
        _, results[seed] = simulate_missing(fed, "client", 0.8, seed=seed)
    got = {s: (r.clients_complete, r.clients_can_train) for s, r in results.items()}
    assert got == EXPECTED_Q08
    # in line with docs/method.md: 105 * (1 - 0.8**2) = 37.8 can train, 105 * 0.2**2 = 4.2 complete
    assert 30 <= np.mean([v[1] for v in got.values()]) <= 50
    assert 2 <= np.mean([v[0] for v in got.values()]) <= 8


def test_client_varied_draws_each_clients_own_rate_with_mean_q(synthetic: FederatedDataset) -> None:
    from client_sdk.data.missing import varied_client_rate

    q = 0.8
    rates = np.array([varied_client_rate(c.name, q, seed=3) for c in synthetic.clients])
    assert abs(rates.mean() - q) < 0.02  # Beta(2q, 2(1-q)) has mean q ...
    assert abs(rates.var() - q * (1 - q) / 3) < 0.01  # ... and variance q(1-q)/(a+b+1)
    assert (rates < 0.2).mean() > 0.01 and (rates > 0.99).mean() > 0.15  # some nearly complete, many barren
    out, summary = simulate_missing(synthetic, "client_varied", q, seed=3)
    masks = np.stack([_mask(c) for c in out.clients])  # [clients, modalities, samples]
    assert (masks.all(axis=2) | ~masks.any(axis=2)).all()  # still whole clients: all rows or none
    lost = ~masks[:, :, 0]
    # a client's modalities go independently at its own rate: P(lose) tracks the drawn rate
    low, high = rates < 0.5, rates > 0.9
    assert abs(lost[low].mean() - rates[low].mean()) < 0.05 and abs(lost[high].mean() - rates[high].mean()) < 0.02
    # complete clients (3 modalities): E[(1 - q_i)^3] = 0.4 * 1.4 * 2.4 / (2 * 3 * 4) = 0.056 at q = 0.8 with
    # 1 - q_i ~ Beta(0.4, 1.6), seven times the uniform rule's 0.2^3 = 0.008
    assert 0.04 < summary.clients_complete / len(out.clients) < 0.075
    again, _ = simulate_missing(synthetic, "client_varied", q, seed=3)
    assert all(np.array_equal(_mask(a), _mask(b)) for a, b in zip(out.clients, again.clients, strict=True))
    other, _ = simulate_missing(synthetic, "client_varied", q, seed=4)
    assert any(not np.array_equal(_mask(a), _mask(b)) for a, b in zip(out.clients, other.clients, strict=True))
    assert all(np.array_equal(_mask(a), _mask(b)) for a, b in
               zip(simulate_missing(synthetic, "client_varied", 0.0, 3)[0].clients, synthetic.clients, strict=True))
