"""ETag cache for immutable tensor bodies (model weights, prototype sets).

The coordinator's model versions and prototype sets are content-addressed: their ETag is the sha256 of the
body (docs/design.md, contract 4). The cache remembers, per URL, the last ETag and body it saw, so the next
download sends ``If-None-Match`` and a ``304 Not Modified`` reuses the stored bytes. Bodies live in memory
(bounded, least recently used dropped first) and, when a directory is given, on disk as
``<dir>/blobs/<sha256>`` with a small JSON index per URL, so a restarted node does not download again.
Every body read back from disk is hashed again before use; a corrupt file is discarded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(body: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(body).hexdigest()


def etag_digest(etag: str | None) -> str | None:
    """The sha256 an ETag names (``"<hex>"`` or ``W/"<hex>"``), or None when it is not a sha256."""
    if not etag:
        return None
    value = etag.strip()
    if value.startswith("W/"):
        value = value[2:]
    value = value.strip('"').lower()
    return value if _SHA256.match(value) else None


@dataclass(frozen=True)
class CachedBody:
    etag: str
    sha256: str
    body: bytes


class ETagCache:
    """Per-URL (ETag, body) store; in memory, plus on disk under ``directory`` when given."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, max_memory_bytes: int = 512 << 20) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_memory_bytes = max_memory_bytes
        self._memory: OrderedDict[str, CachedBody] = OrderedDict()
        self._memory_bytes = 0
        self._lock = threading.Lock()
        self.not_modified = 0  # 304 answers that reused a cached body
        self.downloads = 0  # 200 answers stored
        if self.directory is not None:
            (self.directory / "blobs").mkdir(parents=True, exist_ok=True)
            (self.directory / "index").mkdir(parents=True, exist_ok=True)

    # -- lookup ---------------------------------------------------------------------------------
    def get(self, key: str) -> CachedBody | None:
        with self._lock:
            entry = self._memory.get(key)
            if entry is not None:
                self._memory.move_to_end(key)
                return entry
        entry = self._load_from_disk(key)
        if entry is not None:
            self._remember(key, entry)
        return entry

    def blob(self, sha256: str) -> bytes | None:
        """A body by its digest, from memory or disk, or None."""
        with self._lock:
            for entry in self._memory.values():
                if entry.sha256 == sha256:
                    return entry.body
        return self._read_blob(sha256)

    # -- store ----------------------------------------------------------------------------------
    def put(self, key: str, etag: str, body: bytes) -> CachedBody:
        entry = CachedBody(etag=etag, sha256=sha256_hex(body), body=bytes(body))
        self._remember(key, entry)
        if self.directory is not None:
            self._write_atomic(self.directory / "blobs" / entry.sha256, entry.body)
            index = json.dumps({"key": key, "etag": etag, "sha256": entry.sha256}).encode()
            self._write_atomic(self._index_path(key), index)
        return entry

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()
            self._memory_bytes = 0

    # -- internals ------------------------------------------------------------------------------
    def _remember(self, key: str, entry: CachedBody) -> None:
        with self._lock:
            old = self._memory.pop(key, None)
            if old is not None:
                self._memory_bytes -= len(old.body)
            if len(entry.body) > self.max_memory_bytes:
                return
            self._memory[key] = entry
            self._memory_bytes += len(entry.body)
            while self._memory_bytes > self.max_memory_bytes:
                _, dropped = self._memory.popitem(last=False)
                self._memory_bytes -= len(dropped.body)

    def _index_path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / "index" / (hashlib.sha256(key.encode()).hexdigest() + ".json")

    def _load_from_disk(self, key: str) -> CachedBody | None:
        if self.directory is None:
            return None
        try:
            index = json.loads(self._index_path(key).read_bytes())
            etag, digest = str(index["etag"]), str(index["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        body = self._read_blob(digest)
        return None if body is None else CachedBody(etag=etag, sha256=digest, body=body)

    def _read_blob(self, sha256: str) -> bytes | None:
        if self.directory is None or not _SHA256.match(sha256):
            return None
        path = self.directory / "blobs" / sha256
        try:
            body = path.read_bytes()
        except OSError:
            return None
        if sha256_hex(body) != sha256:
            path.unlink(missing_ok=True)  # corrupt or truncated: download again
            return None
        return body

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
