"""Content-addressed blob store (sha256): model versions, updates, prototype sets, optimiser state.

``fs``: one file per blob under ``blob_dir/ab/<sha256>``, written to a temporary file, fsynced and renamed
(then the directory fsynced) before the database row that refers to it is committed. Reads are ``mmap``s.
``db``: a ``blobs`` table, so replicas on several hosts share blobs through the database alone.

Uploads (:meth:`BlobStore.begin_upload`) arrive chunk by chunk: a pool thread appends each batch to a
temporary file, hashes it and (fs, fsync on) starts its write-back at once, so hashing, writing and most of
the fsync overlap the transfer instead of following it. The body is then read back through an ``mmap`` of
that file, and nothing is visible under its sha256 before ``commit()``.

:meth:`BlobStore.open` gives one blob as an ``mmap`` for as long as the ``with`` block runs: for ``db`` the
bytes are spilled to an unlinked temporary file first, so a reader holding many blobs at once (aggregation)
keeps one blob's bytes in process memory at a time, not all of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import mmap
import os
import secrets
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
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

    def open(self, sha256: str) -> contextlib.AbstractContextManager[Buffer]:
        """The stored bytes as a buffer valid inside the ``with`` block, holding O(1) process memory."""
        ...

    def begin_put(self, data: Buffer, sha256: str) -> PendingBlob:
        """Start storing (possibly in the background); nothing is visible before ``commit()``."""
        ...

    def begin_upload(self, *, durable: bool = True) -> BlobUpload:
        """A blob that arrives in chunks (``durable=False``: only to hash and read it, never committed)."""
        ...


def sha256_hex(data: Buffer) -> str:
    return hashlib.sha256(data).hexdigest()


class PendingBlob(Protocol):
    def commit(self) -> str:
        """Make the blob durable under its sha256 and return it."""
        ...

    def abort(self) -> None:
        ...


class BlobUpload(Protocol):
    def feed(self, chunks: list[bytes]) -> None:
        """Queue chunks (in order) for the writer thread; never blocks."""
        ...

    def finish(self) -> None:
        """No more chunks."""
        ...

    def wait_written(self) -> tuple[str, int]:
        """Block until every chunk is in the file; (sha256, size)."""
        ...

    def view(self) -> Buffer:
        """The uploaded bytes (an mmap of the temporary file); after ``wait_written``."""
        ...

    def commit(self) -> str:
        """Durable under its sha256 (fsync + rename, or the ``blobs`` row); returns the sha256."""
        ...

    def close(self) -> None:
        """Release the file; an upload not committed leaves nothing behind."""
        ...


_WRITERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-writer")
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux ``sync_file_range(fd, off, n, SYNC_FILE_RANGE_WRITE)``: start write-back without waiting for it."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, length: int) -> None:
        function(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # advisory: a failure only loses the overlap

    return start_writeback


_START_WRITEBACK = _load_sync_file_range()


def _close_map(buffer: Buffer | None) -> None:
    if isinstance(buffer, mmap.mmap):
        with contextlib.suppress(BufferError):  # a view still alive: the mmap is released with it
            buffer.close()


def _map_file(fd: int, size: int) -> Buffer:
    return b"" if size == 0 else mmap.mmap(fd, size, access=mmap.ACCESS_READ)


class _SpooledUpload:
    """Chunks appended to a temporary file by a pool thread, in order, hashed as they are written.

    Batches queue in a deque; at most one pool thread drains it at a time, and only while there is work, so
    a slow client holds no thread. ``finish()`` queues the end: the drainer publishes sha256 and size, then
    (``durable``) fsyncs, so validation can read the file while the fsync runs.
    """

    def __init__(self, directory: Path | None, *, durable: bool) -> None:
        fd, path = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=directory)
        os.fchmod(fd, 0o644)  # the blob it may become is readable like those written by put()
        self.fd: int | None = fd
        self.path = Path(path)
        self.durable = durable
        self.sha256 = ""
        self.size = 0
        self._hasher = hashlib.sha256()
        self._lock = threading.Lock()
        self._queue: deque[list[bytes] | None] = deque()
        self._draining = False
        self._aborted = False
        self._error: BaseException | None = None
        self._written = threading.Event()
        self._synced = threading.Event()
        self._map: Buffer | None = None
        self._kept = False  # the file now belongs to the store (renamed into place)

    # ----------------------------------------------------------------------------- event-loop side

    def feed(self, chunks: list[bytes]) -> None:
        self._enqueue(chunks)

    def finish(self) -> None:
        self._enqueue(None)

    def _enqueue(self, item: list[bytes] | None) -> None:
        with self._lock:
            if self._aborted:
                return
            self._queue.append(item)
            if self._draining:
                return
            self._draining = True
        _WRITERS.submit(self._drain)

    # ----------------------------------------------------------------------------- writer side

    def _drain(self) -> None:
        while True:
            with self._lock:
                if self._aborted or not self._queue:
                    self._draining = False
                    aborted = self._aborted
                    break
                item = self._queue.popleft()
            try:
                if self._error is None:
                    self._write(item)
            except BaseException as exc:  # reported to whoever waits; the drainer keeps emptying the queue
                self._error = exc
                self._written.set()
                self._synced.set()
        if aborted:
            self._release()

    def _write(self, chunks: list[bytes] | None) -> None:
        assert self.fd is not None
        if chunks is None:
            self.sha256 = self._hasher.hexdigest()
            self._written.set()
            if self.durable:
                os.fsync(self.fd)
            self._synced.set()
            return
        for chunk in chunks:
            self._hasher.update(chunk)
        offset = self.size
        total = sum(len(c) for c in chunks)
        written = os.writev(self.fd, chunks)
        if written != total:  # short write: finish it chunk by chunk
            rest = memoryview(b"".join(chunks))[written:]
            while rest:
                rest = rest[os.write(self.fd, rest):]
        self.size += total
        if self.durable and _START_WRITEBACK is not None:
            _START_WRITEBACK(self.fd, offset, total)

    # ----------------------------------------------------------------------------- request side

    def wait_written(self) -> tuple[str, int]:
        self._written.wait()
        if self._error is not None:
            raise self._error
        return self.sha256, self.size

    def wait_synced(self) -> None:
        self._synced.wait()
        if self._error is not None:
            raise self._error

    def view(self) -> Buffer:
        if self._map is None:
            self.wait_written()
            assert self.fd is not None
            self._map = _map_file(self.fd, self.size)
        return self._map

    def close(self) -> None:
        with self._lock:
            self._aborted = True
            self._queue.clear()
            if self._draining:
                return  # the drainer releases the file when it stops
        self._release()

    def _release(self) -> None:
        with self._lock:
            fd, self.fd = self.fd, None
            buffer, self._map = self._map, None
        _close_map(buffer)
        if fd is not None:
            os.close(fd)
            if not self._kept:
                self.path.unlink(missing_ok=True)


class _FsUpload(_SpooledUpload):
    def __init__(self, store: FsBlobStore, *, durable: bool) -> None:
        super().__init__(store.incoming, durable=durable and store.fsync)
        self.store = store

    def commit(self) -> str:
        sha256, _ = self.wait_written()
        self.wait_synced()
        if self.store.fsync and not self.durable:  # opened only to hash (a replay), committed all the same
            assert self.fd is not None
            os.fsync(self.fd)
        final = self.store.path(sha256)
        if final.exists():
            return sha256  # the same bytes are already stored; this temporary file is removed on close
        self.store.make_parent(final)
        os.replace(self.path, final)
        self._kept = True
        self.path = final
        self.store.fsync_dir(final.parent)
        return sha256


class _DbUpload(_SpooledUpload):
    def __init__(self, store: DbBlobStore) -> None:
        super().__init__(None, durable=False)  # the database makes it durable
        self.store = store

    def commit(self) -> str:
        sha256, _ = self.wait_written()
        return self.store.put(self.view(), sha256)


class _PendingFile:
    """A blob being written and fsynced to a temporary file in the background, renamed on commit."""

    def __init__(self, store: FsBlobStore, data: Buffer, sha256: str) -> None:
        self.store = store
        self.sha256 = sha256
        self.final = store.path(sha256)
        self.store.make_parent(self.final)
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
        self.incoming = self.root / ".incoming"  # uploads in progress; same file system, so renames are atomic
        self.incoming.mkdir(exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def make_parent(self, final: Path) -> None:
        """Create ``ab/`` on first use, durably (the root's entry for it is fsynced too)."""
        if final.parent.is_dir():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        self.fsync_dir(self.root)

    def put(self, data: Buffer, sha256: str | None = None) -> str:
        sha256 = sha256 or sha256_hex(data)
        final = self.path(sha256)
        if final.exists():
            return sha256
        self.make_parent(final)
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

    def begin_upload(self, *, durable: bool = True) -> BlobUpload:
        return _FsUpload(self, durable=durable)

    def get(self, sha256: str) -> Buffer:
        try:
            with open(self.path(sha256), "rb") as handle:
                return _map_file(handle.fileno(), os.fstat(handle.fileno()).st_size)
        except FileNotFoundError as exc:
            raise BlobNotFoundError(sha256) from exc

    @contextlib.contextmanager
    def open(self, sha256: str) -> Iterator[Buffer]:
        buffer = self.get(sha256)
        try:
            yield buffer
        finally:
            _close_map(buffer)


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
            buffer = _map_file(spill.fileno(), spill.tell())
            try:
                yield buffer
            finally:
                _close_map(buffer)


def make_blob_store(kind: str, root: Path, database: Database, *, fsync: bool = True) -> BlobStore:
    if kind == "db":
        return DbBlobStore(database)
    return FsBlobStore(root, fsync=fsync)
