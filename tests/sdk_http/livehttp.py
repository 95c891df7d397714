"""Real HTTP servers for the SDK tests: a scripted Starlette app under uvicorn, and a TCP proxy that drops
connections on cue. Both listen on 127.0.0.1 with an ephemeral port and run in daemon threads."""

from __future__ import annotations

import contextlib
import inspect
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Seen, Request], Response | Awaitable[Response]]


@dataclass
class ScriptedServer:
    """Routes are (METHOD, path) -> handler(seen, request); every request is recorded in ``seen``."""

    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes[(method, path)] = handler
            return handler

        return register

    def calls(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]

    async def _dispatch(self, request: Request) -> Response:
        seen = Seen(request.method, request.url.path, {k.lower(): v for k, v in request.headers.items()},
                    await request.body())
        self.seen.append(seen)
        handler = self.routes.get((request.method, request.url.path))
        if handler is None:
            return JSONResponse({"title": "Not Found", "status": 404, "detail": request.url.path,
                                 "code": "not_found"}, status_code=404, media_type="application/problem+json")
        result = handler(seen, request)
        return await result if inspect.isawaitable(result) else result

    def start(self) -> ScriptedServer:
        methods = ["GET", "POST", "PUT", "DELETE"]
        app = Starlette(routes=[Route("/{path:path}", self._dispatch, methods=methods)])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none",
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("scripted uvicorn server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)


class DroppingProxy:
    """Forwards TCP to ``upstream``; when a request starts with one of ``drop_prefixes`` (bytes of the
    request line, e.g. ``b"POST /v1/.../updates"``), it forwards the request, waits for the upstream's
    answer to begin (so the server has processed it), then closes the client side without sending it.
    Each prefix drops once. ``dropped`` counts the answers swallowed."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.drop_prefixes: list[bytes] = []
        self.dropped = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stopping = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def drop_once(self, prefix: bytes) -> None:
        with self._lock:
            self.drop_prefixes.append(prefix)

    def _take_drop(self, chunk: bytes) -> bool:
        with self._lock:
            for prefix in self.drop_prefixes:
                if chunk.startswith(prefix):
                    self.drop_prefixes.remove(prefix)
                    return True
        return False

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(downstream,), daemon=True).start()

    def _serve(self, downstream: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            downstream.close()
            return
        state = {"dropping": False}
        done = threading.Event()

        def client_to_server() -> None:
            try:
                while chunk := downstream.recv(65536):
                    if self._take_drop(chunk):
                        state["dropping"] = True
                    upstream.sendall(chunk)
            except OSError:
                pass
            finally:
                done.set()

        def server_to_client() -> None:
            try:
                while chunk := upstream.recv(65536):
                    if state["dropping"]:
                        with self._lock:
                            self.dropped += 1
                        return
                    downstream.sendall(chunk)
            except OSError:
                pass
            finally:
                done.set()

        threading.Thread(target=client_to_server, daemon=True).start()
        threading.Thread(target=server_to_client, daemon=True).start()
        done.wait()
        for s in (downstream, upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stopping = True
        self._listener.close()
