"""/v1/federations/{fid}/events: server-sent events read from the events table (any replica can serve them)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator
from types import FrameType
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from coordinator.auth import Principal, require_reader
from coordinator.core import Services, get_services
from coordinator.events.service import poll
from coordinator.limits import EVENT_STREAM_SLOT
from coordinator.numbers import DB_INT_MAX, NumberTextError, parse_ascii_int
from coordinator.openapi import problems
from coordinator.problems import ProblemError
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import Event

router = APIRouter(prefix="/federations/{fid}", tags=["events"])

HEARTBEAT_S = 15.0

log = logging.getLogger("mfcpl.events")

# Set when the process is asked to stop (SIGTERM, SIGINT): open streams end, so the server's graceful shutdown,
# which waits for every connection to close, is not held up by watchers that never disconnect.
SHUTTING_DOWN = threading.Event()
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _watch_stop_signals() -> None:
    """Chain a handler in front of the server's own for SIGTERM/SIGINT (idempotent; main thread only).

    uvicorn installs its handlers before the application starts and restores the previous ones when it stops,
    so this wraps the handler that is current when the first stream opens, and calls it after noting the stop.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in _STOP_SIGNALS:
        previous = signal.getsignal(sig)
        if getattr(previous, "_mfcpl_stops_streams", False):
            continue

        def handler(signum: int, frame: FrameType | None, previous: object = previous) -> None:
            if not SHUTTING_DOWN.is_set():
                log.info("stopping: closing event streams")
            SHUTTING_DOWN.set()
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:  # the default action: stop as if this handler were not here
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        handler._mfcpl_stops_streams = True  # type: ignore[attr-defined]
        signal.signal(sig, handler)


def format_event(event: Event) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"


@router.get(
    "/events", summary="Stream federation events (SSE)", response_class=StreamingResponse,
    description="A `text/event-stream` of `round.opened`, `update.received`, `round.closed`, `round.failed` and "
    "`federation.status` events, each with an increasing `id`. Reconnect with `Last-Event-ID` (or `?after=`) to "
    "resume without gaps. The stream ends once the federation is completed or cancelled and every event was "
    "sent; `follow=false` sends the backlog and ends at once.",
    responses={200: {"description": "Event stream.", "content": {"text/event-stream": {"example": (
        'id: 7\nevent: round.closed\ndata: {"id":7,"federation_id":"fed_3f2a9c1d4b5e6f70","type":"round.closed",'
        '"round":3,"data":{"received":10,"output_model_version":3},"created_at":"2026-01-01T12:00:00Z"}\n\n')}}},
               **problems(401, 403, 404, 429)},
)
async def stream_events(
    fid: str, request: Request,
    after: Annotated[int | None, Query(ge=0, le=DB_INT_MAX,
                                       description="Send events with id greater than this.")] = None,
    follow: Annotated[bool, Query(description="Keep the stream open for new events.")] = True,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    _: Principal = Depends(require_reader), services: Services = Depends(get_services),
    _slot: None = EVENT_STREAM_SLOT,  # at most max_streams_per_token streams per token (429 past it)
) -> StreamingResponse:
    start = after or 0
    if last_event_id is not None:
        try:
            start = max(start, parse_ascii_int(last_event_id.strip()))
        except NumberTextError:
            raise ProblemError(ErrorCode.BAD_REQUEST,
                               "Last-Event-ID must be an event id (ASCII digits, at most 2**31-1)") from None
    await run_in_threadpool(poll, services, fid, start)  # 404 before the stream starts
    _watch_stop_signals()
    interval = min(0.5, services.settings.tick_s)

    async def generate() -> AsyncIterator[str]:
        last = start
        last_sent = time.monotonic()
        yield "retry: 2000\n\n"
        while True:
            events, terminal = await run_in_threadpool(poll, services, fid, last)
            for event in events:
                last = event.id
                yield format_event(event)
                last_sent = time.monotonic()
            if events:
                continue
            if not follow or terminal or SHUTTING_DOWN.is_set() or await request.is_disconnected():
                return
            if time.monotonic() - last_sent > HEARTBEAT_S:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            await asyncio.sleep(interval)

    return StreamingResponse(generate(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
