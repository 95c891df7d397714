"""The shape every federated dataset takes in memory: client shards, a pooled dev set, a test set."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from client_sdk.data.arrays import MultimodalArrays
from mfcpl.wire.schemas import ModalitySpec

DATA_DIR_ENV = "MFCPL_DATASETS_DIR"  # the coordinator's own state folder is MFCPL_STATE_DIR
DEFAULT_CACHE_DIR = Path("~/.cache/mfcpl/datasets")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where they were looked for; the message says how to get them."""


def default_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where datasets live: the argument, else ``$MFCPL_DATASETS_DIR``, else ``~/.cache/mfcpl/datasets``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return DEFAULT_CACHE_DIR.expanduser()


class UnknownClientError(KeyError, ValueError):
    """A client name the federation does not have (a ``KeyError`` and a ``ValueError``; printed plainly)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class ClientShard:
    """One simulated client's local data.

    ``indices`` are row numbers in the source dataset (for UCI-HAR: rows of the npz / official files
    in the loader's order), so a shard can be traced back to its windows.
    """

    name: str
    data: MultimodalArrays
    indices: np.ndarray
    subject: int | str | None = None

    def __len__(self) -> int:
        return len(self.data)

    @property
    def can_train(self) -> bool:
        """At least one sample has at least one modality."""
        return any(bool(p.any()) for p in self.data.present.values())


@dataclass
class FederatedDataset:
    """Clients, a pooled dev set and a test set, with the modality specs a federation declares."""

    name: str
    clients: list[ClientShard]
    dev: MultimodalArrays
    test: MultimodalArrays
    modalities: list[ModalitySpec]
    num_classes: int
    class_names: list[str]
    dev_indices: np.ndarray | None = None
    test_indices: np.ndarray | None = None
    options: dict[str, object] = field(default_factory=dict)

    def client(self, name: str) -> ClientShard:
        for shard in self.clients:
            if shard.name == name:
                return shard
        known = ", ".join(s.name for s in self.clients[:8])
        raise UnknownClientError(
            f"no client {name!r} in {self.name} (known: {known}{', ...' if len(self.clients) > 8 else ''})"
        )

    @property
    def client_names(self) -> list[str]:
        return [s.name for s in self.clients]

    @property
    def num_train_samples(self) -> int:
        return sum(len(s) for s in self.clients)

    def with_clients(self, clients: list[ClientShard]) -> FederatedDataset:
        return replace(self, clients=clients)
