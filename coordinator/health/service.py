"""Readiness: the database answers and its schema is at the migrations' head, and the blob store can be written."""

from __future__ import annotations

import errno
import logging

from coordinator.blobs import BlobStore
from coordinator.core import Services
from coordinator.db.engine import database_fault
from coordinator.db.migrate import current_revision, head_revision

logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)  # readyz asks every probe

log = logging.getLogger("mfcpl.health")

PROBE_BYTES = b"mfcpl readiness probe\n"


def storage_error(blobs: BlobStore) -> str | None:
    """Write a small temporary blob where uploads are spooled (never committed, removed at once); None if that
    works, else why not (``ENOSPC``, ``EROFS``, ...)."""
    try:
        upload = blobs.begin_upload(durable=False)
        try:
            upload.feed([PROBE_BYTES])
            upload.finish()
            upload.wait_written()
        finally:
            upload.close()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    except Exception as exc:  # a readiness probe reports, never raises (the db store spools to a temp file)
        return type(exc).__name__
    return None


def readiness(services: Services) -> tuple[bool, dict[str, str | None]]:
    """(ready, the body of /readyz); never raises."""
    head = head_revision()
    body: dict[str, str | None] = {}
    try:
        with services.db.engine.connect() as conn:
            current = current_revision(conn)
    except Exception as exc:  # a readiness probe reports, never raises
        body = {"status": "database unreachable", "error": type(exc).__name__,
                "database": database_fault(exc) or "error"}
    else:
        body = {"status": "ready" if current == head else "schema not at head", "schema": current, "head": head}
    storage = storage_error(services.blobs)
    body["storage"] = storage or "writable"
    if storage is not None:
        log.warning("readiness: the blob store cannot be written (%s)", storage)
        if body["status"] == "ready":
            body["status"] = "storage not writable"
    return body["status"] == "ready", body
