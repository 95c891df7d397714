"""uvicorn's httptools protocol with a bound on the time a request's headers may take (``mfcpl serve``).

uvicorn bounds the idle time between requests on a kept-alive connection (``timeout_keep_alive``) but not the
time a client takes to send a request's headers: a client that connects and trickles a header line now and
then holds a connection (and a file descriptor) for as long as it likes. This protocol closes a connection
whose request headers are not complete ``header_read_timeout_s`` (setting ``MFCPL_HEADER_READ_TIMEOUT_S``)
after the connection opened or after the first byte of a request on a kept-alive connection; a request that
had started is answered 408 first. The body has its own bound in the application
(:class:`coordinator.problems.RequestGuardMiddleware`).

Run it with ``uvicorn ... --http coordinator.http_protocol:HeaderTimeoutHttpToolsProtocol``; ``mfcpl serve``
does so.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mfcpl.wire.constants import PROBLEM_CONTENT_TYPE
from mfcpl.wire.errors import ErrorCode

log = logging.getLogger("mfcpl.http")

_BODY = json.dumps({"type": "about:blank", "title": "Request Timeout", "status": 408,
                    "code": str(ErrorCode.REQUEST_TIMEOUT),
                    "detail": "the request headers did not arrive in time"}).encode()
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: "
                     + PROBLEM_CONTENT_TYPE.encode() + b"\r\ncontent-length: " + str(len(_BODY)).encode()
                     + b"\r\n\r\n" + _BODY)


@functools.cache
def header_read_timeout_s() -> float:
    from coordinator.settings import Settings

    return float(Settings().header_read_timeout_s)


class HeaderTimeoutHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._request_begun = False

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(header_read_timeout_s(), self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._request_begun = False
        super().on_headers_complete()

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
        log.info("%sclosing a connection whose request headers did not arrive in %g s", prefix,
                 header_read_timeout_s())
        if self._request_begun:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()
