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

Modules: ``store`` (the interface), ``spool`` (writer pool, mmaps, chunked uploads), ``filesystem`` (``fs``),
``database`` (``db``), ``factory`` (:func:`make_blob_store`), ``orm`` (the ``blobs`` table).
"""

from coordinator.blobs.database import DbBlobStore
from coordinator.blobs.factory import make_blob_store
from coordinator.blobs.filesystem import FsBlobStore
from coordinator.blobs.store import BlobNotFoundError, BlobStore, BlobUpload, Buffer, PendingBlob, sha256_hex

__all__ = ["BlobNotFoundError", "BlobStore", "BlobUpload", "Buffer", "DbBlobStore", "FsBlobStore", "PendingBlob",
           "make_blob_store", "sha256_hex"]
