"""Bearer-token auth: the operator (admin) token, and per-client tokens stored as sha256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Depends, Request
from sqlalchemy import select

from coordinator.clients.orm import ClientRow
from coordinator.core import Services, get_services
from coordinator.problems import ProblemError
from mfcpl.wire.errors import ErrorCode

CLIENT_TOKEN_PREFIX = "mfcpl_c_"


def new_client_token() -> tuple[str, str]:
    """(token, sha256 hex of the token)."""
    token = CLIENT_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    is_admin: bool
    client_id: str | None = None
    federation_id: str | None = None


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
        return Principal(is_admin=True)
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
    return Principal(is_admin=False, client_id=row.id, federation_id=row.federation_id)


def _principal(request: Request, services: Services = Depends(get_services)) -> Principal:
    return authenticate(services, bearer_token(request))


def require_admin(principal: Principal = Depends(_principal)) -> Principal:
    if not principal.is_admin:
        raise ProblemError(ErrorCode.FORBIDDEN, "this endpoint needs the operator (admin) token")
    return principal


def require_reader(fid: str, principal: Principal = Depends(_principal)) -> Principal:
    """Admin, or a client of federation ``fid``."""
    if not principal.is_admin and principal.federation_id != fid:
        raise ProblemError(ErrorCode.FORBIDDEN, f"this client token is not valid for federation {fid}")
    return principal


def require_client(fid: str, principal: Principal = Depends(_principal)) -> Principal:
    """A client of federation ``fid`` (not the admin)."""
    if principal.is_admin:
        raise ProblemError(ErrorCode.FORBIDDEN, "this endpoint needs a client token, not the admin token")
    if principal.federation_id != fid:
        raise ProblemError(ErrorCode.FORBIDDEN, f"this client token is not valid for federation {fid}")
    return principal
