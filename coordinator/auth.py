"""Bearer-token auth: the operator (admin) token, read-only viewer tokens and per-client tokens.

Viewer and client tokens are stored as sha256 hashes. Every protected route depends on one of the ``require_*``
functions below; each names the roles it lets through (:data:`ROLES_OF`), which the OpenAPI document publishes
per operation (``x-mfcpl-roles``, coordinator/openapi.py) and tests/coordinator/test_authorization_matrix.py
checks against the running service.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from coordinator.clients.orm import ClientRow
from coordinator.core import Services, get_services
from coordinator.problems import ProblemError
from coordinator.viewers.orm import ViewerTokenRow
from mfcpl.wire.errors import ErrorCode

CLIENT_TOKEN_PREFIX = "mfcpl_c_"
VIEWER_TOKEN_PREFIX = "mfcpl_v_"

Role = Literal["admin", "viewer", "client"]

BEARER = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="opaque",
    description="The operator (admin) token, a read-only viewer token (`mfcpl_v_...`) or a client token "
    "(`mfcpl_c_...`). Each operation names the roles it accepts (`x-mfcpl-roles`).",
    auto_error=False,  # a missing or malformed header is answered by this module: 401 problem + WWW-Authenticate
)


def new_client_token() -> tuple[str, str]:
    """(token, sha256 hex of the token)."""
    token = CLIENT_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hash_token(token)


def new_viewer_token() -> tuple[str, str]:
    """(token, sha256 hex of the token)."""
    token = VIEWER_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    role: Role
    client_id: str | None = None
    federation_id: str | None = None
    viewer_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def key(self) -> str:
        """Names the token (per-token limits): ``admin``, ``client:<id>``, ``viewer:<id>``."""
        if self.role == "admin":
            return "admin"
        return f"{self.role}:{self.client_id if self.role == 'client' else self.viewer_id}"


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(ErrorCode.UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise _unauthorized("missing Authorization: Bearer <token> header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Authorization header must be 'Bearer <token>'")
    return token.strip()


def authenticate(services: Services, token: str) -> Principal:
    admin = services.settings.admin_token
    if admin and hmac.compare_digest(token.encode(), admin.encode()):
        return Principal(role="admin")
    if token.startswith(VIEWER_TOKEN_PREFIX):
        with services.db.read() as session:
            viewer = session.execute(
                select(ViewerTokenRow.id, ViewerTokenRow.revoked_at).where(
                    ViewerTokenRow.token_hash == hash_token(token))
            ).first()
        if viewer is None:
            raise _unauthorized("unknown token")
        if viewer.revoked_at is not None:
            raise _unauthorized("this viewer token was revoked")
        return Principal(role="viewer", viewer_id=viewer.id)
    with services.db.read() as session:
        row = session.execute(
            select(ClientRow.id, ClientRow.federation_id, ClientRow.revoked).where(
                ClientRow.token_hash == hash_token(token)
            )
        ).first()
    if row is None:
        raise _unauthorized("unknown token")
    if row.revoked:
        raise _unauthorized("this client's token was revoked")
    return Principal(role="client", client_id=row.id, federation_id=row.federation_id)


def _principal(request: Request, _: HTTPAuthorizationCredentials | None = Security(BEARER),
               services: Services = Depends(get_services)) -> Principal:
    # HTTPBearer declares the scheme in the OpenAPI document; the header is checked here, for the problem details.
    return authenticate(services, bearer_token(request))


def _forbidden(detail: str) -> ProblemError:
    return ProblemError(ErrorCode.FORBIDDEN, detail)


def require_admin(principal: Principal = Depends(_principal)) -> Principal:
    """The operator (admin) token only: every write of the operator."""
    if not principal.is_admin:
        raise _forbidden("this endpoint needs the operator (admin) token")
    return principal


def require_watcher(principal: Principal = Depends(_principal)) -> Principal:
    """Admin or viewer: reads across federations (federation list, clients, updates)."""
    if principal.role not in ("admin", "viewer"):
        raise _forbidden("this endpoint needs the operator (admin) token or a viewer token")
    return principal


def require_reader(fid: str, principal: Principal = Depends(_principal)) -> Principal:
    """Admin, viewer, or a client of federation ``fid``."""
    if principal.role == "client" and principal.federation_id != fid:
        raise _forbidden(f"this client token is not valid for federation {fid}")
    return principal


def require_client(fid: str, principal: Principal = Depends(_principal)) -> Principal:
    """A client of federation ``fid`` (not the admin, not a viewer)."""
    if principal.role != "client":
        raise _forbidden(f"this endpoint needs a client token, not the {principal.role} token")
    if principal.federation_id != fid:
        raise _forbidden(f"this client token is not valid for federation {fid}")
    return principal


ROLES_OF: dict[Callable[..., Any], tuple[Role, ...]] = {
    require_admin: ("admin",),
    require_watcher: ("admin", "viewer"),
    require_reader: ("admin", "viewer", "client"),
    require_client: ("client",),
}
"""The roles each auth dependency lets through (a client only for its own federation)."""

FORBIDDEN_DETAIL: dict[Callable[..., Any], str] = {
    require_admin: "this endpoint needs the operator (admin) token",
    require_watcher: "this endpoint needs the operator (admin) token or a viewer token",
    require_reader: "this client token is not valid for federation fed_3f2a9c1d4b5e6f70",
    require_client: "this endpoint needs a client token, not the viewer token",
}
"""An example 403 detail of each auth dependency (the OpenAPI document's examples)."""
