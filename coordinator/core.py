"""The per-process service container: settings, database, blob store, the cache of immutable facts."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from coordinator.blobs import BlobStore, make_blob_store
from coordinator.db.engine import Database
from coordinator.facts import FactsCache
from coordinator.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: BlobStore
    facts: FactsCache = field(default_factory=FactsCache)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        db = Database(settings.db_url, fsync=settings.fsync)
        blobs = make_blob_store(settings.blob_store, settings.blobs_path, db, fsync=settings.fsync)
        return cls(settings=settings, db=db, blobs=blobs)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
