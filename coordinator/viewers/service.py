"""Viewer tokens: create (the token is returned once, kept as its sha256), list, revoke."""

from __future__ import annotations

from sqlalchemy import select

from coordinator.auth import new_viewer_token
from coordinator.core import Services
from coordinator.problems import ProblemError
from coordinator.timeutil import new_id, utcnow
from coordinator.viewers.orm import ViewerTokenRow
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import ViewerToken, ViewerTokenCreated


def viewer_schema(row: ViewerTokenRow) -> ViewerToken:
    return ViewerToken(id=row.id, label=row.label, revoked=row.revoked_at is not None, created_at=row.created_at,
                       revoked_at=row.revoked_at)


def create(services: Services, label: str) -> ViewerTokenCreated:
    token, token_hash = new_viewer_token()
    with services.db.write() as session:
        row = ViewerTokenRow(id=new_id("vwt"), label=label, token_hash=token_hash, created_at=utcnow(),
                             revoked_at=None)
        session.add(row)
        session.flush()
        created = viewer_schema(row)
    return ViewerTokenCreated(**created.model_dump(), token=token)


def list_tokens(services: Services) -> list[ViewerToken]:
    with services.db.read() as session:
        rows = session.scalars(select(ViewerTokenRow).order_by(ViewerTokenRow.created_at, ViewerTokenRow.id))
        return [viewer_schema(r) for r in rows]


def revoke(services: Services, token_id: str) -> ViewerToken:
    """Revoke (idempotent: a revoked token stays revoked, with its first revocation time)."""
    with services.db.write() as session:
        row = session.get(ViewerTokenRow, token_id)
        if row is None:
            raise ProblemError(ErrorCode.NOT_FOUND, f"viewer token {token_id} does not exist")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            session.flush()
        return viewer_schema(row)
