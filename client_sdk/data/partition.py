"""Split any pool of training samples into clients: ``iid``, ``dirichlet``, ``group`` or ``given``.

* ``iid``: shuffle, then ``num_clients`` near-equal parts (named ``c0``, ``c1``, ...);
* ``dirichlet``: label skew; per class, proportions ~ Dirichlet(``alpha``) over ``num_clients`` clients (a
  client that already holds ``N / num_clients`` samples gets no more), redrawn until every client has
  ``min_size`` samples (at most ``MAX_REDRAWS`` draws, then a clear error); named ``c0``, ``c1``, ...;
* ``group``: one client per group id (subject, speaker, site), named by the group names, else ``g<id>``;
* ``given``: the data set's own clients (the default for data sets that come split into clients).

Every draw comes from ``numpy.random.default_rng(SeedSequence([seed, scheme stream]))``, so the same options
give the same clients on every machine: a node can compute exactly its own shard. A federated data set is
re-partitioned by pooling its clients (the group of a sample is the client it came from) and splitting again.
Options that do not apply to the chosen scheme are refused (``ValueError``), never ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from client_sdk.data.arrays import MultimodalArrays
from client_sdk.data.federated import ClientShard, FederatedDataset

DEFAULT_NUM_CLIENTS = 10
DEFAULT_ALPHA = 0.5
DEFAULT_MIN_SIZE = 5
MAX_REDRAWS = 1000
PARTITION_OPTIONS = ("partition", "num_clients", "alpha", "min_size", "seed", "max_clients", "clients")
"""The options :class:`PartitionRequest` takes out of a loader's options."""


class Scheme(StrEnum):
    IID = "iid"
    DIRICHLET = "dirichlet"
    GROUP = "group"
    GIVEN = "given"


_STREAMS = {Scheme.IID: 1, Scheme.DIRICHLET: 2}


def scheme_rng(seed: int, scheme: Scheme) -> np.random.Generator:
    """The one random stream a scheme draws from: a function of the seed and the scheme only."""
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAMS[scheme]]))


# ---------------------------------------------------------------------------------------------- the splits


def iid_split(num_samples: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Positions ``0..num_samples-1`` shuffled and cut into ``num_clients`` near-equal sorted parts."""
    if not 1 <= num_clients <= num_samples:
        raise ValueError(f"iid partition: num_clients must lie in 1..{num_samples} (the samples), got {num_clients}")
    return [np.sort(part) for part in np.array_split(rng.permutation(num_samples), num_clients)]


def dirichlet_label_partition(
    labels: np.ndarray,
    num_shards: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_size: int = 5,
    max_attempts: int = 10_000,
) -> list[np.ndarray]:
    """Split positions ``0..len(labels)-1`` into ``num_shards`` label-skewed shards.

    Per class, proportions ~ Dirichlet(alpha); a shard that already holds ``len/num_shards`` samples gets no
    more (the usual balancing rule of FedMultimodal / NIID-Bench). Redrawn until every shard has
    ``min_size`` samples, at most ``max_attempts`` times.
    """
    n = len(labels)
    if num_shards * min_size > n:
        raise ValueError(f"{n} samples cannot fill {num_shards} shards of at least {min_size}")
    classes = np.unique(labels)
    for _ in range(max_attempts):
        shards: list[list[int]] = [[] for _ in range(num_shards)]
        for cls in classes:
            idx = np.flatnonzero(labels == cls)
            rng.shuffle(idx)
            p = rng.dirichlet(np.full(num_shards, alpha))
            p = p * np.array([len(s) < n / num_shards for s in shards])
            if p.sum() == 0:  # every shard is full: spread this class evenly rather than divide by zero
                p = np.ones(num_shards)
            cuts = (np.cumsum(p / p.sum()) * len(idx)).astype(int)[:-1]
            for shard, part in zip(shards, np.split(idx, cuts), strict=True):
                shard.extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [np.sort(np.array(s, dtype=np.int64)) for s in shards]
    raise ValueError(
        f"no Dirichlet({alpha}) draw gave {num_shards} shards of >= {min_size} samples in {max_attempts} tries; "
        "lower --num-clients or raise --alpha (or lower the min_size option)"
    )


def group_split(groups: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(group id, sorted positions)`` for each group id present, in id order."""
    return [(int(g), np.flatnonzero(groups == g)) for g in np.unique(groups)]


# ---------------------------------------------------------------------------------------------- the pool


@dataclass
class Pool:
    """Training samples before they are split into clients.

    ``indices``: each sample's row in its source; ``groups``: [N] int group id per sample (or None); the group
    ``g`` is named ``group_names[g]`` and carries ``group_subjects[g]`` (a client's ``subject``);
    ``given``: whether the groups are the data set's own clients.
    """

    data: MultimodalArrays
    indices: np.ndarray
    groups: np.ndarray | None = None
    group_names: tuple[str, ...] = ()
    group_subjects: tuple[int | str | None, ...] = ()
    given: bool = False

    def __len__(self) -> int:
        return len(self.data)

    def group_name(self, group: int) -> str:
        return self.group_names[group] if 0 <= group < len(self.group_names) else f"g{group}"

    def group_subject(self, group: int) -> int | str | None:
        if 0 <= group < len(self.group_subjects):
            return self.group_subjects[group]
        return self.group_name(group)

    @property
    def num_groups(self) -> int:
        return 0 if self.groups is None else len(np.unique(self.groups))


def pool_federation(federation: FederatedDataset) -> Pool:
    """All clients of ``federation`` as one pool; each sample's group is the client it came from."""
    clients = federation.clients
    if not clients:
        raise ValueError(f"{federation.name}: no clients to pool")
    data = MultimodalArrays(
        inputs={m: np.concatenate([c.data.inputs[m] for c in clients]) for m in clients[0].data.inputs},
        present={m: np.concatenate([c.data.present[m] for c in clients]) for m in clients[0].data.present},
        labels=np.concatenate([c.data.labels for c in clients]),
    )
    return Pool(
        data=data,
        indices=np.concatenate([c.indices for c in clients]),
        groups=np.concatenate([np.full(len(c), k, dtype=np.int64) for k, c in enumerate(clients)]),
        group_names=tuple(c.name for c in clients),
        group_subjects=tuple(c.subject for c in clients),
        given=True,
    )


# ---------------------------------------------------------------------------------------------- options


def _as_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _as_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str | np.number):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def _as_names(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence):
        return tuple(str(v) for v in value)
    raise ValueError(f"clients must be a list of client names, got {value!r}")


def _as_scheme(value: object) -> Scheme:
    try:
        return Scheme(str(value))
    except ValueError:
        raise ValueError(f"unknown partition {value!r} (choose {', '.join(s.value for s in Scheme)})") from None


@dataclass(frozen=True)
class PartitionSpec:
    """A resolved partition: the scheme and only the options that apply to it."""

    scheme: Scheme
    seed: int = 0
    num_clients: int | None = None
    alpha: float | None = None
    min_size: int | None = None
    max_clients: int | None = None
    clients: tuple[str, ...] | None = None

    def to_options(self) -> dict[str, object]:
        """What ``federation.options`` records."""
        return {
            "partition": self.scheme.value,
            "num_clients": self.num_clients,
            "alpha": self.alpha,
            "min_size": self.min_size,
            "seed": self.seed,
            "max_clients": self.max_clients,
            "clients": list(self.clients) if self.clients is not None else None,
        }


@dataclass(frozen=True)
class PartitionRequest:
    """The partition options a user gave (None: not given), checked against the data by :meth:`resolve`."""

    partition: Scheme | None = None
    num_clients: int | None = None
    alpha: float | None = None
    min_size: int | None = None
    seed: int = 0
    max_clients: int | None = None
    clients: tuple[str, ...] | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> tuple[PartitionRequest, dict[str, object]]:
        """The partition options out of ``options`` (a value of None counts as not given) and the rest."""
        given = {k: v for k, v in options.items() if v is not None}
        rest = {k: v for k, v in given.items() if k not in PARTITION_OPTIONS}
        request = cls(
            partition=_as_scheme(given["partition"]) if "partition" in given else None,
            num_clients=_as_int("num_clients", given["num_clients"]) if "num_clients" in given else None,
            alpha=_as_float("alpha", given["alpha"]) if "alpha" in given else None,
            min_size=_as_int("min_size", given["min_size"]) if "min_size" in given else None,
            seed=_as_int("seed", given.get("seed", 0)),
            max_clients=_as_int("max_clients", given["max_clients"]) if "max_clients" in given else None,
            clients=_as_names(given["clients"]) if "clients" in given else None,
        )
        return request, rest

    def scheme_for(self, pool: Pool) -> Scheme:
        """The scheme asked for, else the data's natural one: given clients, else groups, else iid."""
        if self.partition is not None:
            return self.partition
        if pool.given:
            return Scheme.GIVEN
        return Scheme.GROUP if pool.groups is not None else Scheme.IID

    def resolve(self, pool: Pool) -> PartitionSpec:
        """The spec for ``pool``; a ``ValueError`` for an option that does not apply or a value out of range."""
        scheme = self.scheme_for(pool)
        self.refuse_unused(scheme)
        self._check_data(scheme, pool)
        if self.max_clients is not None and self.max_clients < 1:
            raise ValueError("max_clients must be >= 1")
        spec = PartitionSpec(scheme, self.seed, max_clients=self.max_clients, clients=self.clients)
        if scheme in (Scheme.GIVEN, Scheme.GROUP):
            return spec
        natural = pool.num_groups or DEFAULT_NUM_CLIENTS
        num_clients = self.num_clients if self.num_clients is not None else natural
        if not 1 <= num_clients <= len(pool):
            raise ValueError(f"num_clients must lie in 1..{len(pool)} (the training samples), got {num_clients}")
        if scheme is Scheme.IID:
            return PartitionSpec(scheme, self.seed, num_clients, None, None, self.max_clients, self.clients)
        alpha = self.alpha if self.alpha is not None else DEFAULT_ALPHA
        min_size = self.min_size if self.min_size is not None else min(DEFAULT_MIN_SIZE, len(pool) // num_clients)
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {min_size}")
        return PartitionSpec(scheme, self.seed, num_clients, alpha, min_size, self.max_clients, self.clients)

    def refuse_unused(self, scheme: Scheme) -> None:
        """A ``ValueError`` for an option ``scheme`` does not use (callable before the data is loaded)."""
        if self.alpha is not None and scheme is not Scheme.DIRICHLET:
            raise ValueError(f"alpha applies to partition=dirichlet only (partition is {scheme.value}); "
                             "add --partition dirichlet (a node: ?partition=dirichlet) or drop --alpha")
        if self.min_size is not None and scheme is not Scheme.DIRICHLET:
            raise ValueError(f"min_size applies to partition=dirichlet only (partition is {scheme.value})")
        if self.num_clients is not None and scheme in (Scheme.GIVEN, Scheme.GROUP):
            raise ValueError(
                f"num_clients does not apply to partition={scheme.value} (the clients are the "
                f"{'data set' if scheme is Scheme.GIVEN else 'group'}'s own); use partition=iid or dirichlet"
            )

    @staticmethod
    def _check_data(scheme: Scheme, pool: Pool) -> None:
        if scheme is Scheme.GIVEN and not pool.given:
            raise ValueError(
                "partition=given: this data set is pooled (no clients of its own); use partition=group "
                "(with a group column), iid or dirichlet"
            )
        if scheme is Scheme.GROUP and pool.groups is None:
            raise ValueError("partition=group needs a group column in the pooled train file; it has none")
        if len(pool) == 0:
            raise ValueError("no training samples to partition")


# ---------------------------------------------------------------------------------------------- partitioning


def client_positions(pool: Pool, spec: PartitionSpec) -> list[tuple[str, int | str | None, np.ndarray]]:
    """``(name, subject, positions in the pool)`` of every client ``spec`` makes, before any selection."""
    if spec.scheme in (Scheme.GIVEN, Scheme.GROUP):
        assert pool.groups is not None  # checked by PartitionRequest.resolve
        return [(pool.group_name(g), pool.group_subject(g), pos) for g, pos in group_split(pool.groups)]
    assert spec.num_clients is not None
    rng = scheme_rng(spec.seed, spec.scheme)
    if spec.scheme is Scheme.IID:
        parts = iid_split(len(pool), spec.num_clients, rng)
    else:
        assert spec.alpha is not None and spec.min_size is not None
        parts = dirichlet_label_partition(
            pool.data.labels, spec.num_clients, spec.alpha, rng, min_size=spec.min_size, max_attempts=MAX_REDRAWS
        )
    return [(f"c{k}", None, pos) for k, pos in enumerate(parts)]


def select_clients(
    parts: Sequence[tuple[str, int | str | None, np.ndarray]], max_clients: int | None, clients: Sequence[str] | None
) -> list[tuple[str, int | str | None, np.ndarray]]:
    """The first ``max_clients`` parts, then only those named in ``clients`` (unknown names: ``ValueError``)."""
    kept = list(parts[:max_clients] if max_clients is not None else parts)
    if clients is None:
        return kept
    names = {name for name, _, _ in kept}
    unknown = sorted(set(clients) - names)
    if unknown:
        shown = ", ".join(name for name, _, _ in kept[:8]) + (", ..." if len(kept) > 8 else "")
        raise ValueError(f"unknown clients {unknown} (known: {shown})")
    return [part for part in kept if part[0] in set(clients)]


def partition_pool(pool: Pool, spec: PartitionSpec) -> list[ClientShard]:
    """The clients ``spec`` cuts from ``pool`` (only the selected ones are materialised)."""
    parts = select_clients(client_positions(pool, spec), spec.max_clients, spec.clients)
    return [
        ClientShard(name=name, data=pool.data.subset(pos), indices=pool.indices[pos], subject=subject)
        for name, subject, pos in parts
    ]


def repartition(federation: FederatedDataset, request: PartitionRequest) -> FederatedDataset:
    """``federation`` with its clients split again as ``request`` asks (its dev and test unchanged).

    ``given`` keeps the clients as they are (``max_clients`` / ``clients`` still select); every other scheme
    pools the clients first. The partition is recorded in ``options``.
    """
    pool = pool_federation(federation)
    spec = request.resolve(pool)
    if spec.scheme is Scheme.GIVEN:
        parts = [(c.name, c.subject, np.array([k])) for k, c in enumerate(federation.clients)]
        chosen = select_clients(parts, spec.max_clients, spec.clients)
        clients = [federation.clients[int(pos[0])] for _, _, pos in chosen]
    else:
        clients = partition_pool(pool, spec)
    result = federation.with_clients(clients)
    result.options = {"dev_fraction": None, **federation.options, **spec.to_options()}
    return result
