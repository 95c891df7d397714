"""The blob store interface: a content-addressed store (sha256) of model versions, updates, prototype sets and
optimiser state, and what its writes and chunked uploads return."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

Buffer = bytes | bytearray | memoryview | mmap.mmap


class BlobNotFoundError(KeyError):
    pass


@dataclass(frozen=True)
class StoredBlob:
    """A stored blob as the garbage collector sees it (coordinator/retention.py)."""

    sha256: str
    size_bytes: int
    written_at: datetime  # the last put of these bytes: a put of bytes already stored counts as a write


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

    def stored(self) -> Sequence[StoredBlob]:
        """Every stored blob (for the garbage collector)."""
        ...

    def delete(self, sha256: str, written_before: datetime) -> int | None:
        """Delete the blob unless it was written (or re-written by a put) at or after ``written_before``;
        the bytes freed, or None when it was kept or is absent. Only the garbage collector calls it, after the
        database said nothing references the blob."""
        ...

    def remove_temporaries(self, written_before: datetime) -> int:
        """Remove what crashed writers left behind (temporary files untouched since ``written_before``)."""
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
        """Queue chunks (in order) for the writer thread; never blocks. Raises the writer's ``OSError`` (full or
        read-only storage) once it had one."""
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
