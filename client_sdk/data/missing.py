"""Missing-modality simulation (docs/method.md "Protocol"): which clients / samples lose which modality.

Three rules, all seeded and applied to the clients only (dev and test stay complete):

* ``client``: each client loses each modality independently with probability ``q``, for all its samples.
  A client that loses every modality has nothing to train on (it stays in the list, ``can_train`` False).
* ``client_varied``: as ``client``, but each client first draws its own rate ``q_i ~ Beta(2q, 2(1 - q))``
  (mean ``q``, concentration 2): missing rates that differ across clients, some sites nearly complete and
  others nearly barren (the paper's open question 1).
* ``sample``: each sample, independently with probability ``q``, loses one of its present modalities chosen
  uniformly; a sample never loses its last modality.

The draws of a client depend only on (seed, rule, client name), not on the order or number of clients, so
every method - and every slice of a federation - sees the same corrupted clients for a given seed.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum

import numpy as np

from client_sdk.data.arrays import MultimodalArrays
from client_sdk.data.federated import ClientShard, FederatedDataset


class MissingRule(StrEnum):
    NONE = "none"
    CLIENT = "client"
    SAMPLE = "sample"
    CLIENT_VARIED = "client_varied"


_RULE_STREAM = {MissingRule.CLIENT: 1, MissingRule.SAMPLE: 2, MissingRule.CLIENT_VARIED: 3}
VARIED_CONCENTRATION = 2.0  # a + b of client_varied's Beta(a, b)


def _client_rng(seed: int, rule: MissingRule, client: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _RULE_STREAM[rule], zlib.crc32(client.encode())]))


def client_level_drops(
    client: str, num_samples: int, modalities: Sequence[str], q: float, seed: int
) -> dict[str, np.ndarray]:
    """[N] bool per modality: True where the client level rule removes it (all rows or none)."""
    return _whole_client_drops(_client_rng(seed, MissingRule.CLIENT, client), num_samples, modalities, q)


def _whole_client_drops(rng: np.random.Generator, num_samples: int, modalities: Sequence[str],
                        rate: float) -> dict[str, np.ndarray]:
    """Each modality lost with probability ``rate``, for every one of the client's rows."""
    lost = rng.random(len(modalities)) < rate
    return {m: np.full(num_samples, bool(gone)) for m, gone in zip(modalities, lost, strict=True)}


def varied_client_rate(client: str, q: float, seed: int) -> float:
    """``client_varied``: the client's own missing rate, ``Beta(2q, 2(1 - q))`` (0 or 1 at the ends)."""
    if q <= 0.0 or q >= 1.0:
        return q
    rng = _client_rng(seed, MissingRule.CLIENT_VARIED, client)
    return float(rng.beta(VARIED_CONCENTRATION * q, VARIED_CONCENTRATION * (1 - q)))


def varied_client_drops(
    client: str, num_samples: int, modalities: Sequence[str], q: float, seed: int
) -> dict[str, np.ndarray]:
    """[N] bool per modality: the client rule at the client's own rate :func:`varied_client_rate`."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _RULE_STREAM[MissingRule.CLIENT_VARIED], 1,
                                                        zlib.crc32(client.encode())]))
    return _whole_client_drops(rng, num_samples, modalities, varied_client_rate(client, q, seed))


def sample_level_drops(
    client: str, present: dict[str, np.ndarray], modalities: Sequence[str], q: float, seed: int
) -> dict[str, np.ndarray]:
    """[N] bool per modality: each sample loses, with probability q, one of its present ``modalities``,
    as long as it keeps at least one modality (of all of ``present``) afterwards."""
    rng = _client_rng(seed, MissingRule.SAMPLE, client)
    names = list(modalities)
    n = len(next(iter(present.values()))) if present else 0
    hit = rng.random(n) < q
    pick = rng.random(n)  # uniform in [0, 1): which of the sample's droppable modalities goes
    droppable = np.stack([present[m] for m in names], axis=1)  # [N, M]
    total_present = np.sum([p for p in present.values()], axis=0)
    count = droppable.sum(axis=1)
    hit &= (count >= 1) & (total_present >= 2)
    # the k-th droppable modality of each row, k = floor(pick * count)
    k = np.floor(pick * np.maximum(count, 1)).astype(int)
    rank = np.cumsum(droppable, axis=1) - 1
    chosen = droppable & (rank == k[:, None]) & hit[:, None]
    return {m: chosen[:, j] for j, m in enumerate(names)}


@dataclass(frozen=True)
class MissingSummary:
    """How many clients and samples are complete, partial or empty after a missing-modality rule.

    A client is complete when every sample has every modality, empty when no sample has any (it cannot
    train), partial otherwise. Samples likewise, per sample.
    """

    rule: str
    q: float
    seed: int
    clients_total: int
    clients_complete: int
    clients_partial: int
    clients_empty: int
    samples_total: int
    samples_complete: int
    samples_partial: int
    samples_empty: int
    samples_missing: dict[str, int]

    @property
    def clients_can_train(self) -> int:
        return self.clients_total - self.clients_empty

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "clients_can_train": self.clients_can_train}

    def __str__(self) -> str:
        missing = ", ".join(f"{m} {c}" for m, c in self.samples_missing.items())
        return (
            f"missing rule={self.rule} q={self.q} seed={self.seed}: "
            f"clients {self.clients_total} = {self.clients_complete} complete + {self.clients_partial} partial "
            f"+ {self.clients_empty} empty ({self.clients_can_train} can train); "
            f"samples {self.samples_total} = {self.samples_complete} complete + {self.samples_partial} partial "
            f"+ {self.samples_empty} empty; samples missing per modality: {missing}"
        )


def summarize_missing(
    clients: Sequence[ClientShard], rule: str = MissingRule.NONE, q: float = 0.0, seed: int = 0
) -> MissingSummary:
    counts = {"complete": 0, "partial": 0, "empty": 0}
    samples = {"complete": 0, "partial": 0, "empty": 0}
    per_modality: dict[str, int] = {}
    for shard in clients:
        data = shard.data
        n_present = np.sum([p for p in data.present.values()], axis=0) if data.present else np.zeros(len(data))
        m = len(data.present)
        s_complete = int(np.sum(n_present == m))
        s_empty = int(np.sum(n_present == 0))
        samples["complete"] += s_complete
        samples["empty"] += s_empty
        samples["partial"] += len(data) - s_complete - s_empty
        if s_complete == len(data):
            counts["complete"] += 1
        elif s_empty == len(data):
            counts["empty"] += 1
        else:
            counts["partial"] += 1
        for name, p in data.present.items():
            per_modality[name] = per_modality.get(name, 0) + int(np.sum(~p))
    return MissingSummary(
        rule=str(rule),
        q=float(q),
        seed=int(seed),
        clients_total=len(clients),
        clients_complete=counts["complete"],
        clients_partial=counts["partial"],
        clients_empty=counts["empty"],
        samples_total=sum(samples.values()),
        samples_complete=samples["complete"],
        samples_partial=samples["partial"],
        samples_empty=samples["empty"],
        samples_missing=per_modality,
    )


def drop_modalities(
    shard: ClientShard, rule: MissingRule | str, q: float, seed: int, modalities: Sequence[str] | None = None
) -> ClientShard:
    """A copy of ``shard`` with ``rule`` applied (``modalities``: which ones may go; default all)."""
    rule = MissingRule(rule)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    data: MultimodalArrays = shard.data
    names = list(data.modalities) if modalities is None else list(modalities)
    unknown = set(names) - set(data.modalities)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; the data has {data.modalities}")
    if rule is MissingRule.NONE or q == 0.0 or not names:
        return shard
    if rule is MissingRule.CLIENT:
        drops = client_level_drops(shard.name, len(data), names, q, seed)
    elif rule is MissingRule.CLIENT_VARIED:
        drops = varied_client_drops(shard.name, len(data), names, q, seed)
    else:
        drops = sample_level_drops(shard.name, data.present, names, q, seed)
    return ClientShard(name=shard.name, data=data.with_missing(drops), indices=shard.indices, subject=shard.subject)


def simulate_missing(
    federation: FederatedDataset,
    rule: MissingRule | str,
    q: float,
    seed: int,
    *,
    modalities: Sequence[str] | None = None,
) -> tuple[FederatedDataset, MissingSummary]:
    """Apply ``rule`` with probability ``q`` to every client of ``federation``; dev and test are left as they are.

    Returns the new federation (clients that can no longer train stay in it) and its summary.
    """
    clients = [drop_modalities(c, rule, q, seed, modalities) for c in federation.clients]
    corrupted = federation.with_clients(clients)
    corrupted.options = {**federation.options, "missing_rule": str(MissingRule(rule)), "missing_q": q,
                         "missing_seed": seed}
    return corrupted, summarize_missing(clients, rule, q, seed)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m client_sdk.data missing``: print the partition and missing-modality counts for some seeds."""
    import argparse

    from client_sdk.data.registry import load_federation

    parser = argparse.ArgumentParser(prog="python -m client_sdk.data missing", description=main.__doc__)
    parser.add_argument("--dataset", default="uci_har")
    parser.add_argument("--data-dir", help="folder holding the datasets (default: $MFCPL_DATASETS_DIR or the cache)")
    parser.add_argument("--rule", default="client", choices=[r.value for r in MissingRule])
    parser.add_argument("--q", type=float, default=0.8)
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet alpha (uci_har)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = parser.parse_args(argv)
    for seed in args.seeds:
        options: dict[str, object] = {"seed": seed, "alpha": args.alpha} if args.dataset == "uci_har" else {}
        federation = load_federation(args.dataset, args.data_dir, **options)
        sizes = [len(c) for c in federation.clients]
        print(
            f"seed {seed}: {len(sizes)} clients, shard sizes {min(sizes)}..{max(sizes)}, "
            f"train {sum(sizes)}, dev {len(federation.dev)}, test {len(federation.test)}"
        )
        _, summary = simulate_missing(federation, args.rule, args.q, seed)
        print(f"  {summary}")
    return 0

