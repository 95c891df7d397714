"""The ``fs`` store: one file per blob under ``blob_dir/ab/<sha256>``, written to a temporary file, fsynced and
renamed (then the directory fsynced) before the database row that refers to it is committed. Reads are mmaps."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path

from coordinator.blobs.spool import WRITERS, PendingNothing, SpooledUpload, close_map, map_file
from coordinator.blobs.store import BlobNotFoundError, BlobUpload, Buffer, PendingBlob, StoredBlob, sha256_hex


class _FsUpload(SpooledUpload):
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
        if self.store.refresh(final):
            return sha256  # the same bytes are already stored; this temporary file is removed on close
        self.store.make_parent(final)
        os.replace(self.path, final)
        self._kept = True
        self.path = final
        self.store.fsync_dir(final.parent)
        return sha256


class _PendingFile:
    """A blob being written and fsynced to a temporary file in the background, renamed on commit."""

    def __init__(self, store: FsBlobStore, data: Buffer, sha256: str) -> None:
        self.store = store
        self.sha256 = sha256
        self.final = store.path(sha256)
        self.store.make_parent(self.final)
        self.tmp = self.final.with_name(f".{sha256}.{secrets.token_hex(4)}.tmp")
        self.future: Future[None] = WRITERS.submit(self._write, data)

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


class FsBlobStore:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming = self.root / ".incoming"  # uploads in progress; same file system, so renames are atomic
        self.incoming.mkdir(exist_ok=True)
        self.trash = self.root / ".trash"  # blobs being deleted by the garbage collector (see ``delete``)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def make_parent(self, final: Path) -> None:
        """Create ``ab/`` on first use, durably (the root's entry for it is fsynced too)."""
        if final.parent.is_dir():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        self.fsync_dir(self.root)

    def refresh(self, final: Path) -> bool:
        """Mark stored bytes as just written (the garbage collector spares them for its grace period), so a
        row about to reference them is safe; False when they are not stored."""
        try:
            os.utime(final)
        except FileNotFoundError:
            return False
        return True

    def put(self, data: Buffer, sha256: str | None = None) -> str:
        sha256 = sha256 or sha256_hex(data)
        final = self.path(sha256)
        if self.refresh(final):
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
            return PendingNothing(lambda: self.put(data, sha256))  # refreshes it (or writes it, if collected)
        return _PendingFile(self, data, sha256)

    def begin_upload(self, *, durable: bool = True) -> BlobUpload:
        return _FsUpload(self, durable=durable)

    # ------------------------------------------------------------------ garbage collection (coordinator/retention.py)

    def stored(self) -> list[StoredBlob]:
        found = []
        for shard in os.scandir(self.root):
            if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(shard.path):
                if len(entry.name) == 64 and entry.name.startswith(shard.name) and not entry.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):
                        info = entry.stat(follow_symlinks=False)
                        found.append(StoredBlob(entry.name, info.st_size, datetime.fromtimestamp(info.st_mtime, UTC)))
        return found

    def delete(self, sha256: str, written_before: datetime) -> int | None:
        """Move the file aside (atomic rename), then look at its mtime: a writer that re-put the same bytes before
        the rename refreshed it, and the file goes back; a writer after the rename finds no file and writes a new
        one. Only a file untouched since ``written_before`` is unlinked."""
        final = self.path(sha256)
        self.trash.mkdir(exist_ok=True)
        aside = self.trash / f"{sha256}.{secrets.token_hex(4)}"
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            return None
        info = os.stat(aside)
        if info.st_mtime >= written_before.timestamp():
            self._restore(aside, final)
            return None
        aside.unlink()
        return info.st_size

    def _restore(self, aside: Path, final: Path) -> None:
        with contextlib.suppress(FileExistsError):  # a writer stored the same bytes again meanwhile
            os.link(aside, final)
        aside.unlink()
        self.fsync_dir(final.parent)

    def remove_temporaries(self, written_before: datetime) -> int:
        """Spool files of uploads and ``.<sha>.*.tmp`` files of puts that crashed, untouched since
        ``written_before``; a file a crashed collector left in ``.trash`` goes back (the next run decides)."""
        removed = 0
        cutoff = written_before.timestamp()
        candidates = [Path(e.path) for e in os.scandir(self.incoming)]
        for shard in os.scandir(self.root):
            if len(shard.name) == 2 and shard.is_dir(follow_symlinks=False):
                candidates += [Path(e.path) for e in os.scandir(shard.path) if e.name.endswith(".tmp")]
        for path in candidates:
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        if self.trash.is_dir():
            for entry in os.scandir(self.trash):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_ctime < time.time() - 60:  # not a collector at work right now
                        self._restore(Path(entry.path), self.path(entry.name.split(".")[0]))
        return removed

    def get(self, sha256: str) -> Buffer:
        try:
            with open(self.path(sha256), "rb") as handle:
                return map_file(handle.fileno(), os.fstat(handle.fileno()).st_size)
        except FileNotFoundError as exc:
            raise BlobNotFoundError(sha256) from exc

    @contextlib.contextmanager
    def open(self, sha256: str) -> Iterator[Buffer]:
        buffer = self.get(sha256)
        try:
            yield buffer
        finally:
            close_map(buffer)
