"""RFC 9457 problem documents: one exception type, handlers for every error path, a body-size limit.

Every error leaves the service as ``application/problem+json`` with a stable ``code``
(:class:`mfcpl.wire.errors.ErrorCode`). Unexpected exceptions become a 500 ``internal_error`` whose body
carries no internals; client mistakes are caught before that as 4xx.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mfcpl.wire.constants import PROBLEM_CONTENT_TYPE, SAFETENSORS_CONTENT_TYPE
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import Problem
from mfcpl.wire.tensors import TensorFormatError

log = logging.getLogger("mfcpl.problems")

TENSOR_CONTENT_TYPES = (SAFETENSORS_CONTENT_TYPE, "application/octet-stream")

# Status of each tensor-format code from mfcpl.wire.tensors.
TENSOR_ERROR_STATUS: dict[str, int] = {
    ErrorCode.MALFORMED_TENSORS: 422,
    ErrorCode.MISSING_TENSOR: 422,
    ErrorCode.UNKNOWN_TENSOR: 422,
    ErrorCode.SHAPE_MISMATCH: 422,
    ErrorCode.DTYPE_MISMATCH: 422,
    ErrorCode.NON_FINITE: 422,
    ErrorCode.CLASS_OUT_OF_RANGE: 422,
}


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        code: ErrorCode | str,
        detail: str,
        *,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = str(code)
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors
        self.headers = headers

    @classmethod
    def from_tensor_error(cls, exc: TensorFormatError) -> ProblemError:
        return cls(TENSOR_ERROR_STATUS.get(exc.code, 422), exc.code, exc.detail)


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = Problem(title=title or HTTPStatus(status).phrase, status=status, detail=detail, code=code,
                   instance=instance, errors=errors)
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status,
                        media_type=PROBLEM_CONTENT_TYPE, headers=headers)


_HTTP_CODES = {
    400: ErrorCode.BAD_REQUEST, 401: ErrorCode.UNAUTHORIZED, 403: ErrorCode.FORBIDDEN, 404: ErrorCode.NOT_FOUND,
    405: ErrorCode.BAD_REQUEST, 409: ErrorCode.CONFLICT, 413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE, 422: ErrorCode.VALIDATION_ERROR,
}


def _jsonable_errors(errors: Any) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        item = {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")),
                "type": str(err.get("type", ""))}
        out.append(item)
    return out


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc.status, exc.code, exc.detail, title=exc.title, instance=request.url.path,
                                errors=exc.errors, headers=exc.headers)

    @app.exception_handler(TensorFormatError)
    async def _tensor(request: Request, exc: TensorFormatError) -> JSONResponse:
        p = ProblemError.from_tensor_error(exc)
        return problem_response(p.status, p.code, p.detail, instance=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _jsonable_errors(exc.errors())
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        detail = f"{'.'.join(first['loc'])}: {first['msg']}" if first["loc"] else first["msg"]
        return problem_response(422, ErrorCode.VALIDATION_ERROR, detail, instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.BAD_REQUEST if exc.status_code < 500 else ErrorCode.INTERNAL)
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no resource at {request.url.path}"
        return problem_response(exc.status_code, code, detail, instance=request.url.path,
                                headers=getattr(exc, "headers", None))

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
        # A number the database cannot hold (e.g. round 99999999999999999999 in a URL): the client's mistake.
        log.info("value out of range on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(422, ErrorCode.VALIDATION_ERROR, "a number in the request is out of range",
                                instance=request.url.path)

    @app.exception_handler(OperationalError)
    async def _busy(request: Request, exc: OperationalError) -> JSONResponse:
        # Lock or statement timeouts (Postgres 55P03 / 57014) and SQLite's "database is locked": try again.
        state = getattr(exc.orig, "sqlstate", None)
        if state in ("55P03", "57014") or "database is locked" in str(exc.orig):
            log.warning("database busy on %s %s: %s", request.method, request.url.path, exc.orig)
            return problem_response(503, ErrorCode.INTERNAL, "the database is busy; retry shortly",
                                    instance=request.url.path, headers={"Retry-After": "1"})
        log.exception("database error on %s %s", request.method, request.url.path)
        return problem_response(500, ErrorCode.INTERNAL, "internal error; see the coordinator log",
                                instance=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, ErrorCode.INTERNAL, "internal error; see the coordinator log",
                                instance=request.url.path)


class BodyTooLargeError(StarletteHTTPException):
    """Raised from ``receive`` when a chunked body passes the limit; handled like any HTTP error (413)."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail, headers={"Connection": "close"})


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
        response = problem_response(413, ErrorCode.PAYLOAD_TOO_LARGE, detail, instance=scope.get("path"),
                                    headers={"Connection": "close"})
        await response(scope, receive, send)
