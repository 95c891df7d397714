"""The blob store a process uses, chosen by the ``blob_store`` setting."""

from __future__ import annotations

from pathlib import Path

from coordinator.blobs.database import DbBlobStore
from coordinator.blobs.filesystem import FsBlobStore
from coordinator.blobs.store import BlobStore
from coordinator.db.engine import Database


def make_blob_store(kind: str, root: Path, database: Database, *, fsync: bool = True) -> BlobStore:
    if kind == "db":
        return DbBlobStore(database)
    return FsBlobStore(root, fsync=fsync)
