"""Idempotency-Key for the creating POSTs (federation, client enrolment, model version 0, evaluation).

A request that carries ``Idempotency-Key`` is answered once and remembered for ``idempotency_ttl_s``: the key
is scoped to the principal (the sha256 of the bearer token that sent it) and stored with the sha256 of the
request (method, path and body) and the response (status, JSON body, headers), in the ``idempotency_keys``
table. The same key with the same request answers the stored response again (header ``Idempotent-Replayed:
true``); the same key with a different request answers 409 ``idempotency_conflict``. Without the header nothing
changes.

Exactly once: the lookup, the route's own writes and the key's row are one transaction
(``Database.unit_of_work``: the service's ``write()`` joins it as a SAVEPOINT). Two identical requests that race
both run, but the row's primary key lets only one commit; the other's transaction, its resource included, is
rolled back and it answers the winner's response. A refusal (any problem document) stores nothing, so the key
can be retried. A crash before the commit leaves neither the resource nor the key.

Secrets in a response (the client token of an enrolment, ``sealed`` fields) are stored encrypted under a key
derived from the caller's own bearer token, which the database never holds: a replay re-shows the token to the
principal that enrolled the client, and the stored row alone discloses nothing.

Updates keep their own mechanism (coordinator/updates/): the key lives on the update row itself, checked before
the body is read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Integer, String, delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from coordinator.auth import bearer_token, hash_token
from coordinator.core import Services
from coordinator.db.base import Base
from coordinator.problems import ProblemError
from coordinator.timeutil import utcnow
from mfcpl.wire.constants import IDEMPOTENCY_HEADER
from mfcpl.wire.errors import ErrorCode

REPLAYED_HEADER = "Idempotent-Replayed"
KEY_MAX_LENGTH = 200

IdempotencyKey = Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER, max_length=KEY_MAX_LENGTH,
                                              description="Makes the request safe to retry: the same key with "
                                              "the same request answers the first response again.")]


class IdempotencyKeyRow(Base):
    """A remembered creating request: (principal, key) -> request hash and response."""

    __tablename__ = "idempotency_keys"

    principal: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the bearer token
    key: Mapped[str] = mapped_column(String(KEY_MAX_LENGTH), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]]  # the JSON response; ``sealed`` fields encrypted (module docstring)
    headers: Mapped[dict[str, Any]]
    sealed: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(index=True)


@dataclass(frozen=True)
class Created:
    """What a route answers: status, JSON body, extra headers; ``sealed``: body fields stored encrypted."""

    status: int
    body: BaseModel | dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    sealed: Sequence[str] = ()

    def json_body(self) -> dict[str, Any]:
        return self.body.model_dump(mode="json") if isinstance(self.body, BaseModel) else dict(self.body)


class _LostRaceError(Exception):
    """An identical request committed the same key first."""


def request_sha256(request: Request, payload: BaseModel | bytes | bytearray) -> str:
    """The request's identity: method, path and body (a JSON body canonically, so key order does not matter)."""
    if isinstance(payload, BaseModel):
        body = json.dumps(payload.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()
    else:
        body = hashlib.sha256(payload).hexdigest().encode()
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    digest.update(body)
    return digest.hexdigest()


def _keystream(secret: str, context: str, size: int) -> bytes:
    key = hmac.new(secret.encode(), b"mfcpl-idempotency-seal\n" + context.encode(), hashlib.sha256).digest()
    blocks = (hmac.new(key, counter.to_bytes(8, "big"), hashlib.sha256).digest()
              for counter in range((size + 31) // 32))
    return b"".join(blocks)[:size]


def seal(value: str, secret: str, context: str) -> str:
    data = value.encode()
    return base64.b64encode(bytes(a ^ b for a, b in zip(data, _keystream(secret, context, len(data)),
                                                        strict=True))).decode()


def unseal(value: str, secret: str, context: str) -> str:
    data = base64.b64decode(value)
    return bytes(a ^ b for a, b in zip(data, _keystream(secret, context, len(data)), strict=True)).decode()


def _response(status: int, body: Mapping[str, Any], headers: Mapping[str, str], replayed: bool) -> JSONResponse:
    extra = {**headers, REPLAYED_HEADER: "true"} if replayed else dict(headers)
    return JSONResponse(dict(body), status_code=status, headers=extra)


@dataclass(frozen=True)
class _Caller:
    secret: str  # the bearer token: only the key to seal with, never stored
    principal: str
    key: str
    fingerprint: str

    @property
    def context(self) -> str:
        return f"{self.principal}\n{self.key}\n{self.fingerprint}"


def _replay(session: Session, caller: _Caller, now: datetime, ttl_s: float) -> JSONResponse | None:
    """The stored answer for this caller's key, None if there is none (or it expired); 409 for another request."""
    row = session.get(IdempotencyKeyRow, (caller.principal, caller.key))
    if row is None or row.created_at <= now - timedelta(seconds=ttl_s):
        return None
    if row.request_sha256 != caller.fingerprint:
        raise ProblemError(ErrorCode.IDEMPOTENCY_CONFLICT,
                           f"Idempotency-Key {caller.key!r} was already used for a different request")
    body = dict(row.body)
    for name in row.sealed:
        body[name] = unseal(body[name], caller.secret, caller.context)
    return _response(row.status, body, row.headers, replayed=True)


def idempotent(services: Services, request: Request, key: str | None, payload: BaseModel | bytes | bytearray,
               create: Callable[[], Created]) -> JSONResponse:
    """Run ``create`` at most once per (principal, key); call it from a worker thread (it blocks).

    Without a key, ``create`` just runs. With one, see the module docstring."""
    if key is None:
        created = create()
        return _response(created.status, created.json_body(), created.headers, replayed=False)
    secret = bearer_token(request)
    caller = _Caller(secret, hash_token(secret), key, request_sha256(request, payload))
    ttl_s = services.settings.idempotency_ttl_s
    for _ in range(3):
        try:
            with services.db.unit_of_work() as session:
                now = utcnow()
                replay = _replay(session, caller, now, ttl_s)
                if replay is not None:
                    return replay
                # An expired row not yet collected is forgotten; the route's writes join this transaction. Only an
                # expired one: a row an identical request committed since _replay looked must stay, so that this
                # request's insert collides with it and answers its response (deleting it made two resources).
                session.execute(delete(IdempotencyKeyRow).where(
                    IdempotencyKeyRow.principal == caller.principal, IdempotencyKeyRow.key == key,
                    IdempotencyKeyRow.created_at <= now - timedelta(seconds=ttl_s)))
                created = create()
                body = created.json_body()
                stored = {**body, **{name: seal(str(body[name]), secret, caller.context) for name in created.sealed}}
                session.add(IdempotencyKeyRow(principal=caller.principal, key=key, request_sha256=caller.fingerprint,
                                              status=created.status, body=stored, headers=dict(created.headers),
                                              sealed=list(created.sealed), created_at=now))
                try:
                    session.flush()
                except IntegrityError as exc:
                    raise _LostRaceError from exc
        except _LostRaceError:
            continue  # an identical request committed the key first: the next pass answers its response
        except ProblemError:
            # Refused, possibly because an identical request won a race for the same resource (a unique name,
            # model version 0): if it committed this key, answer its response; otherwise the refusal stands.
            with services.db.read() as session:
                replay = _replay(session, caller, utcnow(), ttl_s)
            if replay is not None:
                return replay
            raise
        return _response(created.status, body, created.headers, replayed=False)
    raise ProblemError(ErrorCode.IDEMPOTENCY_CONFLICT, f"Idempotency-Key {key!r} is in use by concurrent requests")


def forget_expired(services: Services, now: datetime) -> int:
    """Delete keys older than ``idempotency_ttl_s``; the number deleted."""
    cutoff = now - timedelta(seconds=services.settings.idempotency_ttl_s)
    with services.db.write() as session:
        result = session.execute(delete(IdempotencyKeyRow).where(IdempotencyKeyRow.created_at < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)
