"""Content-addressed blob store (sha256): model versions, updates, prototype sets, optimiser state.

``fs``: one file per blob under ``blob_dir/ab/<sha256>``, written to a temporary file, fsynced and renamed
(then the directory fsynced) before the database row that refers to it is committed. Reads are ``mmap``s.
``db``: a ``blobs`` table, so replicas on several hosts share blobs through the database alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import secrets
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from coordinator.blobs.orm import BlobRow
from coordinator.db.engine import Database
from coordinator.timeutil import utcnow

Buffer = bytes | bytearray | memoryview | mmap.mmap


class BlobNotFoundError(KeyError):
    pass


class BlobStore(Protocol):
    def put(self, data: Buffer, sha256: str | None = None) -> str:
        """Store bytes durably and return their sha256 (computed if not given)."""
        ...

    def get(self, sha256: str) -> Buffer:
        """The stored bytes (an mmap for files)."""
        ...

    def begin_put(self, data: Buffer, sha256: str) -> PendingBlob:
        """Start storing (possibly in the background); nothing is visible before ``commit()``."""
        ...


def sha256_hex(data: Buffer) -> str:
    return hashlib.sha256(data).hexdigest()


class PendingBlob(Protocol):
    def commit(self) -> str:
        """Make the blob durable under its sha256 and return it."""
        ...

    def abort(self) -> None:
        ...


_WRITERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-writer")


class _PendingFile:
    """A blob being written and fsynced to a temporary file in the background, renamed on commit."""

    def __init__(self, store: FsBlobStore, data: Buffer, sha256: str) -> None:
        self.store = store
        self.sha256 = sha256
        self.final = store.path(sha256)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.with_name(f".{sha256}.{secrets.token_hex(4)}.tmp")
        self.future: Future[None] = _WRITERS.submit(self._write, data)

    def _write(self, data: Buffer) -> None:
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.store.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self) -> str:
        self.future.result()
        os.replace(self.tmp, self.final)
        self.store.fsync_dir(self.final.parent)
        return self.sha256

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.future.result()
        self.tmp.unlink(missing_ok=True)


class _PendingNothing:
    def __init__(self, put: Callable[[], str]) -> None:
        self.put = put

    def commit(self) -> str:
        return self.put()

    def abort(self) -> None:
        pass


class FsBlobStore:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, data: Buffer, sha256: str | None = None) -> str:
        sha256 = sha256 or sha256_hex(data)
        final = self.path(sha256)
        if final.exists():
            return sha256
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{sha256}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, final)
        self.fsync_dir(final.parent)
        return sha256

    def fsync_dir(self, directory: Path) -> None:
        if not self.fsync:
            return
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def begin_put(self, data: Buffer, sha256: str) -> PendingBlob:
        """Start writing in the background (overlapping validation); ``commit()`` makes it durable."""
        if self.path(sha256).exists():
            return _PendingNothing(lambda: sha256)
        return _PendingFile(self, data, sha256)

    def get(self, sha256: str) -> Buffer:
        try:
            with open(self.path(sha256), "rb") as handle:
                if os.fstat(handle.fileno()).st_size == 0:
                    return b""
                return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError as exc:
            raise BlobNotFoundError(sha256) from exc


class DbBlobStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def put(self, data: Buffer, sha256: str | None = None) -> str:
        sha256 = sha256 or sha256_hex(data)
        insert = pg_insert if self.database.dialect == "postgresql" else sqlite_insert
        stmt = insert(BlobRow).values(sha256=sha256, size_bytes=len(data), data=bytes(data), created_at=utcnow())
        with self.database.write() as session:
            session.execute(stmt.on_conflict_do_nothing(index_elements=["sha256"]))
        return sha256

    def begin_put(self, data: Buffer, sha256: str) -> PendingBlob:
        return _PendingNothing(lambda: self.put(data, sha256))

    def get(self, sha256: str) -> Buffer:
        with self.database.read() as session:
            data = session.scalar(select(BlobRow.data).where(BlobRow.sha256 == sha256))
        if data is None:
            raise BlobNotFoundError(sha256)
        return data


def make_blob_store(kind: str, root: Path, database: Database, *, fsync: bool = True) -> BlobStore:
    if kind == "db":
        return DbBlobStore(database)
    return FsBlobStore(root, fsync=fsync)
