"""What both stores share for writing: the writer thread pool, early write-back, read-only mmaps, and the
chunked upload spooled to a temporary file (hashed and written by a pool thread while it arrives)."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import mmap
import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from coordinator.blobs.store import Buffer

WRITERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-writer")
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


def close_map(buffer: Buffer | None) -> None:
    if isinstance(buffer, mmap.mmap):
        with contextlib.suppress(BufferError):  # a view still alive: the mmap is released with it
            buffer.close()


def map_file(fd: int, size: int) -> Buffer:
    return b"" if size == 0 else mmap.mmap(fd, size, access=mmap.ACCESS_READ)


class SpooledUpload:
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
        """Queue ``chunks``; raises the writer's error (a full or read-only disk) as soon as there is one, so the
        request is answered while its body still arrives instead of after all of it."""
        if self._error is not None:
            raise self._error
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
        WRITERS.submit(self._drain)

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
            self._map = map_file(self.fd, self.size)
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
        close_map(buffer)
        if fd is not None:
            os.close(fd)
            if not self._kept:
                self.path.unlink(missing_ok=True)


class PendingNothing:
    def __init__(self, put: Callable[[], str]) -> None:
        self.put = put

    def commit(self) -> str:
        return self.put()

    def abort(self) -> None:
        pass
