"""The ``db`` store: a ``blobs`` table, so replicas on several hosts share blobs through the database alone."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from coordinator.blobs.orm import BlobRow
from coordinator.blobs.spool import PendingNothing, SpooledUpload, close_map, map_file
from coordinator.blobs.store import BlobNotFoundError, BlobUpload, Buffer, PendingBlob, StoredBlob, sha256_hex
from coordinator.db.engine import Database
from coordinator.timeutil import utcnow


class _DbUpload(SpooledUpload):
    def __init__(self, store: DbBlobStore) -> None:
        super().__init__(None, durable=False)  # the database makes it durable
        self.store = store

    def commit(self) -> str:
        sha256, _ = self.wait_written()
        return self.store.put(self.view(), sha256)


class DbBlobStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def put(self, data: Buffer, sha256: str | None = None) -> str:
        sha256 = sha256 or sha256_hex(data)
        insert = pg_insert if self.database.dialect == "postgresql" else sqlite_insert
        stmt = insert(BlobRow).values(sha256=sha256, size_bytes=len(data), data=bytes(data), created_at=utcnow())
        # Bytes already stored get a fresh created_at: the garbage collector spares them for its grace period, so
        # the row about to reference them is safe (coordinator/retention.py).
        with self.database.write() as session:
            session.execute(stmt.on_conflict_do_update(index_elements=["sha256"],
                                                       set_={"created_at": stmt.excluded.created_at}))
        return sha256

    def stored(self) -> list[StoredBlob]:
        with self.database.read() as session:
            rows = session.execute(select(BlobRow.sha256, BlobRow.size_bytes, BlobRow.created_at)).all()
        return [StoredBlob(sha256, size, written_at) for sha256, size, written_at in rows]

    def delete(self, sha256: str, written_before: datetime) -> int | None:
        """One guarded DELETE (``created_at`` older than ``written_before``); inside the collector's unit of work
        it commits with the collector's re-check of the references."""
        with self.database.write() as session:
            size = session.scalar(delete(BlobRow).where(BlobRow.sha256 == sha256, BlobRow.created_at < written_before)
                                  .returning(BlobRow.size_bytes))
        return int(size) if size is not None else None

    def remove_temporaries(self, written_before: datetime) -> int:
        return 0  # nothing of this store outlives a crash: uploads spool to the system temporary directory

    def begin_put(self, data: Buffer, sha256: str) -> PendingBlob:
        return PendingNothing(lambda: self.put(data, sha256))

    def begin_upload(self, *, durable: bool = True) -> BlobUpload:
        return _DbUpload(self)

    def get(self, sha256: str) -> Buffer:
        with self.database.read() as session:
            data = session.scalar(select(BlobRow.data).where(BlobRow.sha256 == sha256))
        if data is None:
            raise BlobNotFoundError(sha256)
        return data

    @contextlib.contextmanager
    def open(self, sha256: str) -> Iterator[Buffer]:
        """The blob spilled to an unlinked temporary file and mapped: the bytes leave process memory at once."""
        with tempfile.TemporaryFile(prefix="mfcpl-blob-") as spill:
            data = self.get(sha256)
            view = memoryview(data)
            while view:
                view = view[spill.write(view):]
            del view, data
            spill.flush()
            buffer = map_file(spill.fileno(), spill.tell())
            try:
                yield buffer
            finally:
                close_map(buffer)
