"""The per-process service container: settings, database, blob store, in-process caches of immutable rows."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from coordinator.blobs import BlobStore, make_blob_store
from coordinator.db.engine import Database
from coordinator.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: BlobStore
    # Immutable facts (federation configs, model tensor specs) cached per process; never mutable state.
    _cache: dict[Any, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        db = Database(settings.db_url, fsync=settings.fsync)
        blobs = make_blob_store(settings.blob_store, settings.blobs_path, db, fsync=settings.fsync)
        return cls(settings=settings, db=db, blobs=blobs)

    def cached(self, key: Any) -> Any:
        with self._lock:
            return self._cache.get(key)

    def remember(self, key: Any, value: Any) -> Any:
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = value
        return value


def get_services(request: Request) -> Services:
    return request.app.state.services
