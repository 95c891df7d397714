"""RFC 9457 problem documents: one exception type, handlers for every error path, the request guard.

Every error leaves the service as ``application/problem+json`` with a stable ``code``
(:class:`mfcpl.wire.errors.ErrorCode`). Client mistakes are 4xx. Faults of the service's own resources get a
5xx code of their own and never ``internal_error``: a busy database (lock or statement timeout, pool
exhausted) 503 ``database_busy``, an unreachable, refusing, dropped, full or read-only database 503
``database_unavailable``, read-only or missing blob storage 503 ``storage_unavailable`` (all three with
``Retry-After``), full storage (ENOSPC, quota, file size limit) 507 ``storage_full``. Only what is none of
these (a bug) is a 500 ``internal_error`` whose body carries no internals.

:class:`RequestGuardMiddleware` makes sure every request gets an answer: a body that stalls is answered 408
``request_timeout``; an error answered before the body was read drains the rest of the body first (so closing
the connection cannot reset it under the answer); an unexpected exception becomes the 500 here instead of
reaching the server (which would close the connection); a client that went away is logged at INFO.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coordinator.db.engine import database_fault
from mfcpl.wire.constants import API_PREFIX, PROBLEM_CONTENT_TYPE, SAFETENSORS_CONTENT_TYPE
from mfcpl.wire.errors import ERROR_STATUS, GENERIC_CODE, ErrorCode, status_of, title_of
from mfcpl.wire.schemas import Problem
from mfcpl.wire.tensors import TensorFormatError

log = logging.getLogger("mfcpl.problems")

TENSOR_CONTENT_TYPES = (SAFETENSORS_CONTENT_TYPE, "application/octet-stream")

# Retry-After (seconds) of the faults a client should retry: a busy database frees up within a second or so; an
# unavailable database or storage needs longer (a restart, a failover, an operator).
BUSY_RETRY_AFTER_S = 1
UNAVAILABLE_RETRY_AFTER_S = 5

# errno values of storage that is full, and of storage that cannot be written now.
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
STORAGE_UNAVAILABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT,
                                        errno.ENOTDIR, errno.EMFILE, errno.ENFILE, errno.ESTALE})


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem document; the status is the code's
    (:data:`mfcpl.wire.errors.ERROR_STATUS`) unless ``status`` says otherwise."""

    def __init__(
        self,
        code: ErrorCode | str,
        detail: str,
        *,
        status: int | None = None,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status if status is not None else status_of(code)
        self.code = str(code)
        self.detail = detail
        self.title = title or title_of(self.status)
        self.errors = errors
        self.headers = headers

    @classmethod
    def from_tensor_error(cls, exc: TensorFormatError) -> ProblemError:
        # A body that breaks the tensor layout is the client's mistake (422), even under a code this table lacks.
        status = status_of(exc.code if exc.code in ERROR_STATUS else ErrorCode.MALFORMED_TENSORS)
        return cls(exc.code, exc.detail, status=status)


def problem_response(
    code: ErrorCode | str,
    detail: str,
    *,
    status: int | None = None,
    title: str | None = None,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The problem document for ``code``; ``status`` defaults to the code's."""
    status = status if status is not None else status_of(code)
    body = Problem(title=title or title_of(status), status=status, detail=detail, code=str(code), instance=instance,
                   errors=errors)
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status,
                        media_type=PROBLEM_CONTENT_TYPE, headers=headers)


def code_of_status(status: int) -> ErrorCode:
    """The generic code of an HTTP error raised by the framework (404 route, 405 method, 413 body, ...)."""
    return GENERIC_CODE.get(status, ErrorCode.BAD_REQUEST if status < 500 else ErrorCode.INTERNAL)


def _jsonable_errors(errors: Any) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        item = {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")),
                "type": str(err.get("type", ""))}
        out.append(item)
    return out


def _unauthenticated(request: Request) -> JSONResponse | None:
    """The 401 a request under the API prefix gets when its token is missing or unknown, else None.

    FastAPI parses and validates the body before the routes' auth dependencies run; this puts authentication
    first for requests the framework refuses on its own.
    """
    if not request.url.path.startswith(API_PREFIX + "/"):
        return None
    from coordinator.auth import authenticate, bearer_token  # auth imports this module

    try:
        authenticate(request.app.state.services, bearer_token(request))
    except ProblemError as exc:
        return problem_response(exc.code, exc.detail, status=exc.status, instance=request.url.path,
                                headers=exc.headers)
    except Exception:  # the database cannot say: answer what the framework found
        log.info("token check before a refused body failed", exc_info=True)
    return None


HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _allowed_methods(request: Request) -> list[str]:
    """Every method the API documents at this path (Starlette's own 405 names only the first route's).

    Read from the OpenAPI document, the public description of the routes, compiled once per app."""
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(request.app.state, "allowed_methods", None)
    if table is None:
        table = []
        for template, operations in request.app.openapi().get("paths", {}).items():
            parts = re.split(r"(\{[^}/]+\})", template)
            pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
            table.append((re.compile(f"^{pattern}$"), {m.upper() for m in operations if m in HTTP_METHODS}))
        request.app.state.allowed_methods = table
    return sorted(set().union(*(methods for pattern, methods in table if pattern.match(request.url.path))))


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc.code, exc.detail, status=exc.status, title=exc.title, instance=request.url.path,
                                errors=exc.errors, headers=exc.headers)

    @app.exception_handler(TensorFormatError)
    async def _tensor(request: Request, exc: TensorFormatError) -> JSONResponse:
        p = ProblemError.from_tensor_error(exc)
        return problem_response(p.code, p.detail, status=p.status, instance=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        denied = _unauthenticated(request)  # never tell an anonymous caller what is wrong with its request
        if denied is not None:
            return denied
        errors = _jsonable_errors(exc.errors())
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        detail = f"{'.'.join(first['loc'])}: {first['msg']}" if first["loc"] else str(first["msg"])
        return problem_response(ErrorCode.VALIDATION_ERROR, detail, instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            denied = _unauthenticated(request)  # a body that cannot be parsed: the token is checked first
            if denied is not None:
                return denied
        detail = exc.detail if isinstance(exc.detail, str) else title_of(exc.status_code)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no resource at {request.url.path}"
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
            detail = f"{request.method} is not allowed on {request.url.path}; allowed: {headers['Allow']}"
        return problem_response(code_of_status(exc.status_code), detail, status=exc.status_code,
                                instance=request.url.path, headers=headers or None)

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
        # A number the database cannot hold (e.g. round 99999999999999999999 in a URL): the client's mistake.
        log.info("value out of range on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(ErrorCode.VALIDATION_ERROR, "a number in the request is out of range",
                                instance=request.url.path)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeoutError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        answer = database_problem(exc)
        if answer is None:
            log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
            answer = ProblemError(ErrorCode.INTERNAL, "internal error; see the coordinator log")
        else:
            log.warning("%s on %s %s: %s", answer.code, request.method, request.url.path,
                        getattr(exc, "orig", None) or exc)
        return problem_response(answer.code, answer.detail, instance=request.url.path, headers=answer.headers)

    @app.exception_handler(OSError)
    async def _storage(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OSError)
        answer = storage_problem(exc)
        if answer is None:
            log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
            answer = ProblemError(ErrorCode.INTERNAL, "internal error; see the coordinator log")
        else:
            log.warning("%s on %s %s: %s", answer.code, request.method, request.url.path, exc)
        return problem_response(answer.code, answer.detail, instance=request.url.path, headers=answer.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Only reached for errors raised outside RequestGuardMiddleware (it answers the others itself).
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(ErrorCode.INTERNAL, "internal error; see the coordinator log",
                                instance=request.url.path)


def database_problem(exc: BaseException) -> ProblemError | None:
    """The 503 of a database fault (:func:`coordinator.db.engine.database_fault`), or None for other errors."""
    fault = database_fault(exc)
    if fault == "busy":
        return ProblemError(ErrorCode.DATABASE_BUSY, "the database is busy; retry shortly",
                            headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
    if fault == "unavailable":
        return ProblemError(ErrorCode.DATABASE_UNAVAILABLE, "the database is unavailable; retry later",
                            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})
    return None


def storage_problem(exc: OSError) -> ProblemError | None:
    """507 ``storage_full`` or 503 ``storage_unavailable`` for a storage error number, else None."""
    name = errno.errorcode.get(exc.errno or 0, "")
    if exc.errno in STORAGE_FULL_ERRNOS:
        return ProblemError(ErrorCode.STORAGE_FULL, f"the coordinator's storage is full ({name}); nothing was stored")
    if exc.errno in STORAGE_UNAVAILABLE_ERRNOS:
        return ProblemError(ErrorCode.STORAGE_UNAVAILABLE,
                            f"the coordinator's storage cannot be written ({name}); nothing was stored",
                            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})
    return None


class BodyTooLargeError(StarletteHTTPException):
    """Raised from ``receive`` when a chunked body passes the limit; handled like any HTTP error (413)."""

    def __init__(self, detail: str) -> None:
        super().__init__(ERROR_STATUS[ErrorCode.PAYLOAD_TOO_LARGE], detail, headers={"Connection": "close"})


class BodySizeLimitMiddleware:
    """413 problem for bodies over the limit: safetensors bodies get ``max_update_bytes``, others
    ``max_json_bytes``. Checks Content-Length up front and counts chunked bodies as they arrive."""

    def __init__(self, app: ASGIApp, *, max_json_bytes: int, max_tensor_bytes: int) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.max_tensor_bytes = max_tensor_bytes

    def _limit(self, scope: Scope) -> int:
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        return self.max_tensor_bytes if content_type in TENSOR_CONTENT_TYPES else self.max_json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared > limit:
                await self._reject(scope, receive, send, f"body of {declared} bytes exceeds the limit of {limit}")
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(f"body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, counting_receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, detail: str) -> None:
        response = problem_response(ErrorCode.PAYLOAD_TOO_LARGE, detail, instance=scope.get("path"),
                                    headers={"Connection": "close"})
        await response(scope, receive, send)


class BodyReadTimeoutError(StarletteHTTPException):
    """Raised from ``receive`` when the body stalls; handled like any HTTP error (408, connection closed)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(ERROR_STATUS[ErrorCode.REQUEST_TIMEOUT],
                         f"no part of the request body arrived for {timeout_s:g} s", headers={"Connection": "close"})


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers") or ():
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return bytes(value).strip() != b"0"
    return False


def _closes(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"connection" and b"close" in value.lower() for name, value in headers)


class RequestGuardMiddleware:
    """Every request gets an answer, and no wait is unbounded.

    * Each read of the request body waits at most ``body_read_timeout_s``; past it the request is answered 408
      ``request_timeout`` and the connection closed (a body shorter than its Content-Length on a connection the
      client keeps open, a stalled upload).
    * An error answered before the whole body arrived (a refusal before the body, a full disk while it
      streams) first reads and discards the rest of it, up to ``drain_max_bytes``, so that closing the
      connection cannot reset it under the answer; past that bound, or when the body stalls, the answer
      carries ``Connection: close``. A 413 closes without reading more, and a client that sent
      ``Expect: 100-continue`` and got no ``100`` is not asked for its body (the server discards what comes).
    * An exception that escapes the application is answered here (500 ``internal_error``, traceback logged)
      rather than by the server, which would drop the connection; a client that disconnected is logged at
      INFO, not as an error.
    """

    def __init__(self, app: ASGIApp, *, body_read_timeout_s: float = 30.0,
                 drain_max_bytes: int = 256 * 1024 * 1024) -> None:
        self.app = app
        self.body_read_timeout_s = body_read_timeout_s
        self.drain_max_bytes = drain_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        timeout = self.body_read_timeout_s
        body_done = not _has_body(scope)
        expects_continue = any(n == b"expect" and v.lower() == b"100-continue" for n, v in scope.get("headers", ()))
        receive_called = False
        started = completed = False

        async def guarded_receive() -> Message:
            nonlocal body_done, receive_called
            if body_done:  # waiting for a disconnect (event streams) is not bounded
                return await receive()
            receive_called = True
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                body_done = True  # nothing more is read; the answer closes the connection
                raise BodyReadTimeoutError(timeout) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def drain() -> bool:
            """Read and discard the rest of the body; whether all of it was read."""
            nonlocal body_done
            drained = 0
            started_at = time.monotonic()
            while not body_done:
                try:
                    message = await guarded_receive()
                except BodyReadTimeoutError:
                    return False
                drained += len(message.get("body", b""))
                if drained > self.drain_max_bytes:
                    return False
            if drained:
                log.debug("discarded %d body bytes in %.2f s before an error answer", drained,
                          time.monotonic() - started_at)
            return True

        async def guarded_send(message: Message) -> None:
            nonlocal started, completed
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                status = message["status"]
                unread = status >= 400 and not body_done and not _closes(headers)
                if unread and (status == 413 or (expects_continue and not receive_called) or not await drain()):
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                completed = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except ClientDisconnect:
            log.info("client disconnected during %s %s", scope.get("method"), scope.get("path"))
        except Exception:
            if completed:  # a background task after the answer: nothing more to tell the client
                log.exception("error after answering %s %s", scope.get("method"), scope.get("path"))
                return
            if started:  # half an answer went out: the server must close the connection
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            response = problem_response(ErrorCode.INTERNAL, "internal error; see the coordinator log",
                                        instance=scope.get("path"))
            await response(scope, guarded_receive, guarded_send)
