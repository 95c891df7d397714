"""The per-process cache of immutable facts: what never changes once its row exists, so every replica may keep
its own copy (design.md contract 5). Never mutable state.

Each kind of fact has its own key and value type and its own getter and ``remember_*`` method. When the cache
holds more than :data:`MAX_FACTS` entries, all of them are dropped at the next ``remember_*`` (and re-read on
demand).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from mfcpl.wire.schemas import FederationCreate

MAX_FACTS = 10_000

TensorSpecs = dict[str, list[Any]]
"""``{name: [dtype code, shape]}`` of every tensor of a model version."""

PrototypeDims = Mapping[str, int]
"""Prototype dimension per level."""


@dataclass(frozen=True)
class RoundFacts:
    """What never changes once a round exists: its participants and input model version."""

    participants: frozenset[str]
    count: int
    input_model_version: int


@dataclass(frozen=True)
class ModelKey:
    federation_id: str
    version: int


@dataclass(frozen=True)
class RoundKey:
    federation_id: str
    number: int


_K = TypeVar("_K")
_V = TypeVar("_V")


class FactsCache:
    """Thread-safe; one per :class:`coordinator.core.Services`."""

    def __init__(self, max_entries: int = MAX_FACTS) -> None:
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._configs: dict[str, FederationCreate] = {}
        self._model_specs: dict[ModelKey, TensorSpecs] = {}
        self._rounds: dict[RoundKey, RoundFacts] = {}
        # Dimensions of the complete prototypes a round starts from, by that round's input model version.
        self._previous_dims: dict[ModelKey, PrototypeDims] = {}
        # Dimensions fixed by a round's accepted updates (only ever grows: a fixed dimension never changes).
        self._round_dims: dict[RoundKey, PrototypeDims] = {}

    # ---------------------------------------------------------------------------------------------- typed

    def config(self, fid: str) -> FederationCreate | None:
        return self._get(self._configs, fid)

    def remember_config(self, fid: str, config: FederationCreate) -> FederationCreate:
        return self._put(self._configs, fid, config)

    def model_specs(self, fid: str, version: int) -> TensorSpecs | None:
        return self._get(self._model_specs, ModelKey(fid, version))

    def remember_model_specs(self, fid: str, version: int, specs: TensorSpecs) -> TensorSpecs:
        return self._put(self._model_specs, ModelKey(fid, version), specs)

    def round_facts(self, fid: str, number: int) -> RoundFacts | None:
        return self._get(self._rounds, RoundKey(fid, number))

    def remember_round_facts(self, fid: str, number: int, facts: RoundFacts) -> RoundFacts:
        return self._put(self._rounds, RoundKey(fid, number), facts)

    def previous_dims(self, fid: str, input_version: int) -> PrototypeDims | None:
        return self._get(self._previous_dims, ModelKey(fid, input_version))

    def remember_previous_dims(self, fid: str, input_version: int, dims: PrototypeDims) -> PrototypeDims:
        return self._put(self._previous_dims, ModelKey(fid, input_version), dims)

    def round_dims(self, fid: str, number: int) -> PrototypeDims | None:
        return self._get(self._round_dims, RoundKey(fid, number))

    def remember_round_dims(self, fid: str, number: int, dims: PrototypeDims) -> PrototypeDims:
        return self._put(self._round_dims, RoundKey(fid, number), dims)

    # ---------------------------------------------------------------------------------------------- storage

    def _tables(self) -> tuple[dict[Any, Any], ...]:
        return self._configs, self._model_specs, self._rounds, self._previous_dims, self._round_dims

    def _size(self) -> int:
        return sum(len(table) for table in self._tables())

    def _get(self, table: dict[_K, _V], key: _K) -> _V | None:
        with self._lock:
            return table.get(key)

    def _put(self, table: dict[_K, _V], key: _K, value: _V) -> _V:
        with self._lock:
            if self._size() > self._max_entries:
                for each in self._tables():
                    each.clear()
            table[key] = value
        return value
