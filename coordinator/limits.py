"""Per-token concurrency limits: how many uploads and event streams one token may hold at once.

One client token must not be able to take the coordinator for itself (hundreds of open event streams slowing
every other read, or a dozen concurrent large uploads filling the temporary space). Each guarded route holds a
slot of its kind for the token while it runs; past the token's limit the request is answered at once with 429
``too_many_requests`` and ``Retry-After``, before its body is read.

| kind | routes | client token | admin token |
|---|---|---|---|
| uploads | POST .../rounds/{r}/updates, POST .../models | ``max_uploads_per_token`` (2) | ``max_admin_uploads`` (4) |
| streams | GET .../events | ``max_streams_per_token`` (4) | ``max_admin_streams`` (32) |

The counts are **per process**: with N workers or replicas a token may hold up to N times the limit (a load
balancer that spreads one token's requests over them). They live in memory only, so a restart frees every slot.

A route takes its slot with one dependency, ``Depends(UPLOAD_SLOT_CLIENT)`` and so on: uploads hold it while the
route function runs (the body is read inside it), streams until the response has been sent completely or the
client went away.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request

from coordinator.auth import Principal, require_admin, require_client, require_reader
from coordinator.core import Services, get_services
from coordinator.problems import ProblemError
from coordinator.settings import Settings
from mfcpl.wire.errors import ErrorCode


class TokenLimiter:
    """Counts of held slots per (kind, token); thread-safe, in memory."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def try_acquire(self, kind: str, key: str, limit: int) -> bool:
        with self._lock:
            held = self._held.get((kind, key), 0)
            if held >= limit:
                return False
            self._held[(kind, key)] = held + 1
            return True

    def release(self, kind: str, key: str) -> None:
        with self._lock:
            held = self._held.get((kind, key), 0) - 1
            if held > 0:
                self._held[(kind, key)] = held
            else:
                self._held.pop((kind, key), None)

    def held(self, kind: str, key: str) -> int:
        with self._lock:
            return self._held.get((kind, key), 0)


@dataclass(frozen=True)
class SlotKind:
    name: str  # "uploads" or "streams"
    client_limit: Callable[[Settings], int]
    admin_limit: Callable[[Settings], int]
    retry_after_s: int

    def limit(self, settings: Settings, principal: Principal) -> int:
        return self.admin_limit(settings) if principal.is_admin else self.client_limit(settings)


UPLOADS = SlotKind("uploads", lambda s: s.max_uploads_per_token, lambda s: s.max_admin_uploads, retry_after_s=1)
STREAMS = SlotKind("streams", lambda s: s.max_streams_per_token, lambda s: s.max_admin_streams, retry_after_s=5)


def limiter_of(request: Request) -> TokenLimiter:
    """The app's limiter (one per app, so several apps in one process do not share counts)."""
    state = request.app.state
    limiter: TokenLimiter | None = getattr(state, "token_limiter", None)
    if limiter is None:  # created on the event loop thread, where no other request can interleave
        limiter = state.token_limiter = TokenLimiter()
    return limiter


def token_key(principal: Principal) -> str:
    return principal.key


def slot(kind: SlotKind, auth: Callable[..., Principal]) -> Callable[..., AsyncIterator[None]]:
    """A dependency (with ``yield``) that holds one ``kind`` slot of the token that ``auth`` authenticates.

    ``auth`` is the route's own auth dependency: FastAPI resolves it once per request for both.
    """

    async def hold(request: Request, principal: Principal = Depends(auth),
                   services: Services = Depends(get_services)) -> AsyncIterator[None]:
        limiter = limiter_of(request)
        key = token_key(principal)
        limit = kind.limit(services.settings, principal)
        if not limiter.try_acquire(kind.name, key, limit):
            raise ProblemError(
                ErrorCode.TOO_MANY_REQUESTS,
                f"this token already holds {limit} concurrent {kind.name} (the limit per token); retry once one "
                "has finished",
                headers={"Retry-After": str(kind.retry_after_s)},
            )
        try:
            yield
        finally:
            limiter.release(kind.name, key)

    hold.__name__ = f"hold_{kind.name}_slot"
    return hold


def _depends(kind: SlotKind, auth: Callable[..., Principal], scope: Any) -> Any:
    return Depends(slot(kind, auth), scope=scope)


UPDATE_UPLOAD_SLOT = _depends(UPLOADS, require_client, "function")
"""For POST .../updates: held while the route function runs (it reads the whole body)."""
MODEL_UPLOAD_SLOT = _depends(UPLOADS, require_admin, "function")
"""For POST .../models."""
EVENT_STREAM_SLOT = _depends(STREAMS, require_reader, "request")
"""For GET .../events: held until the stream has ended (sent completely, or the client went away)."""
