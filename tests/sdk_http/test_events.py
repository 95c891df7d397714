"""Server-sent events: parsing, Last-Event-ID resume after the stream ends or drops, and the timeout."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from starlette.responses import StreamingResponse

from client_sdk.client import MfcplClient, iter_sse
from client_sdk.errors import InvalidResponseError
from tests.sdk_http.livehttp import ScriptedServer
from tests.sdk_http.wire import NOW

EVENTS_PATH = "/v1/federations/fed1/events"


def _event(i: int) -> dict:
    return {"id": i, "federation_id": "fed1", "type": "round.opened" if i % 2 else "round.closed", "round": i,
            "data": {"n": i}, "created_at": NOW}


def _frame(i: int) -> str:
    return f"id: {i}\nevent: {_event(i)['type']}\ndata: {json.dumps(_event(i))}\n\n"


def test_iter_sse_follows_the_whatwg_field_rules() -> None:
    lines = [": keep-alive", "id: 7", "event: round.opened", "data: {\"a\":", "data:1}", "retry: 500", "",
             "data: no id", "", "event: empty", ""]
    events = list(iter_sse(iter(lines)))
    assert [(e.id, e.event, e.data, e.retry) for e in events] == [
        ("7", "round.opened", '{"a":\n1}', 500),
        ("7", None, "no id", None),  # the last event id carries over
    ]


def test_stream_resumes_with_last_event_id(scripted: ScriptedServer) -> None:
    @scripted.route("GET", EVENTS_PATH)
    def stream(seen, request):
        after = int(seen.headers.get("last-event-id", "0"))

        async def frames():
            yield ": hello\n\n"
            for i in range(after + 1, min(after + 3, 6)):  # two events per connection, then the server closes
                yield _frame(i)

        return StreamingResponse(frames(), media_type="text/event-stream")

    with MfcplClient(scripted.url, "t", backoff_base=0.01) as client:
        events = client.events.stream("fed1", max_events=5, timeout=10)
        got = list(events)
    assert [e.id for e in got] == [1, 2, 3, 4, 5]
    assert got[0].type == "round.opened" and got[1].data == {"n": 2}
    assert events.last_event_id == "5"
    assert [c.headers.get("last-event-id") for c in scripted.calls("GET", EVENTS_PATH)] == [None, "2", "4"]
    assert scripted.calls("GET", EVENTS_PATH)[0].headers["accept"] == "text/event-stream"


def test_stream_starts_after_a_given_event_id_and_ends_at_its_timeout(scripted: ScriptedServer) -> None:
    @scripted.route("GET", EVENTS_PATH)
    def stream(seen, request):
        async def frames():
            yield _frame(int(seen.headers["last-event-id"]) + 1)
            await asyncio.sleep(30)  # then silence

        return StreamingResponse(frames(), media_type="text/event-stream")

    with MfcplClient(scripted.url, "t") as client:
        started = time.monotonic()
        got = list(client.events.stream("fed1", last_event_id=41, timeout=0.8))
        elapsed = time.monotonic() - started
    assert [e.id for e in got] == [42]
    assert 0.7 <= elapsed < 3.0


def test_malformed_event_is_an_invalid_response(scripted: ScriptedServer) -> None:
    scripted.route("GET", EVENTS_PATH)(lambda seen, r: StreamingResponse(iter(["data: {\"id\": 1}\n\n"]),
                                                                         media_type="text/event-stream"))
    with MfcplClient(scripted.url, "t") as client, pytest.raises(InvalidResponseError):
        list(client.events.stream("fed1", timeout=5))
