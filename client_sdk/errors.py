"""Typed errors raised by :class:`client_sdk.client.MfcplClient`.

Every error is an :class:`MfcplError`. Errors that come from an HTTP answer are :class:`APIStatusError`
subclasses chosen by status code and carry the coordinator's problem document (RFC 9457,
:class:`mfcpl.wire.schemas.Problem`), so callers can branch on the stable ``code``::

    try:
        client.updates.submit(fid, r, update)
    except ConflictError as exc:
        if exc.code == ErrorCode.ROUND_NOT_OPEN: ...

Errors raised before any answer arrived are :class:`APIConnectionError` (and its subclass
:class:`APITimeoutError`); the names avoid shadowing the builtins ``ConnectionError`` and ``TimeoutError``.
"""

from __future__ import annotations

import json

import httpx
from pydantic import ValidationError as _PydanticValidationError

from mfcpl.wire.errors import ERROR_STATUS, GENERIC_CODE, ErrorCode, title_of
from mfcpl.wire.schemas import Problem

_DETAIL_LIMIT = 2000


class MfcplError(Exception):
    """Base class of every error the SDK raises."""


class APIConnectionError(MfcplError):
    """No HTTP answer: the connection failed or dropped (after the retries were spent)."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.request = request

    def __reduce__(self) -> tuple[type[APIConnectionError], tuple[str]]:
        # Pickles (for worker pools) without the request, which holds an unpicklable stream.
        return type(self), (str(self),)


class APITimeoutError(APIConnectionError):
    """The request timed out (connect, read, write or pool timeout)."""


class InvalidResponseError(MfcplError):
    """The coordinator answered 2xx with a body that does not match the contract."""


class ContentIntegrityError(InvalidResponseError):
    """A downloaded tensor body does not hash to the sha256 the coordinator announced."""


class APIStatusError(MfcplError):
    """The coordinator answered with an error status; ``problem`` holds its problem details."""

    def __init__(self, problem: Problem, *, response: httpx.Response | None, status_code: int | None = None) -> None:
        super().__init__(f"{problem.status} {problem.code}: {problem.detail}")
        self.problem = problem
        self.response = response  # None after a pickle round trip (worker pools)
        self.status_code = response.status_code if response is not None else status_code or problem.status

    def __reduce__(self) -> tuple[object, ...]:
        return _unpickle_status_error, (type(self), self.problem.model_dump_json(), self.status_code)

    @property
    def code(self) -> str:
        return self.problem.code

    @property
    def detail(self) -> str:
        return self.problem.detail


def _unpickle_status_error(cls: type[APIStatusError], problem: str, status_code: int) -> APIStatusError:
    return cls(Problem.model_validate_json(problem), response=None, status_code=status_code)


class BadRequestError(APIStatusError):
    """400 (and other 4xx without a dedicated class): the request is wrong."""


class ValidationError(BadRequestError):
    """422: the body or parameters failed validation; ``problem.errors`` lists the fields."""


class AuthenticationError(APIStatusError):
    """401: missing or unknown token."""


class PermissionDeniedError(APIStatusError):
    """403: the token is valid but may not do this (e.g. a client token on an admin route)."""


class NotFoundError(APIStatusError):
    """404."""


class ConflictError(APIStatusError):
    """409: the resource is not in a state that allows this (round not open, idempotency conflict, ...)."""


class PayloadTooLargeError(APIStatusError):
    """413."""


class RateLimitError(APIStatusError):
    """429 (after the retries were spent)."""


class ServerError(APIStatusError):
    """5xx (after the retries were spent)."""


class ServiceUnavailableError(ServerError):
    """503 (after the retries, which honour ``Retry-After``): ``database_busy``, ``database_unavailable``,
    ``storage_unavailable``, or a proxy without a live replica."""


class InsufficientStorageError(ServerError):
    """507 ``storage_full``: the coordinator cannot store the body until an operator frees space (not retried)."""


# The class of each generic code; the status each one answers is the wire table's.
_BY_CODE: dict[ErrorCode, type[APIStatusError]] = {
    ErrorCode.BAD_REQUEST: BadRequestError,
    ErrorCode.UNAUTHORIZED: AuthenticationError,
    ErrorCode.FORBIDDEN: PermissionDeniedError,
    ErrorCode.NOT_FOUND: NotFoundError,
    ErrorCode.CONFLICT: ConflictError,
    ErrorCode.PAYLOAD_TOO_LARGE: PayloadTooLargeError,
    ErrorCode.VALIDATION_ERROR: ValidationError,
}
# 429 comes from a proxy or rate limiter, never with a coordinator code.
_BY_STATUS: dict[int, type[APIStatusError]] = {ERROR_STATUS[code]: cls for code, cls in _BY_CODE.items()} | {
    429: RateLimitError,
    503: ServiceUnavailableError,
    507: InsufficientStorageError,
}


def error_class_for_status(status: int) -> type[APIStatusError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    if 400 <= status < 500:
        return BadRequestError
    return APIStatusError


def _fallback_code(status: int) -> str:
    """The code of an answer without one: the status's generic code."""
    if status in GENERIC_CODE:
        return str(GENERIC_CODE[status])
    return str(ErrorCode.INTERNAL) if status >= 500 else "http_error"


def problem_from_response(response: httpx.Response) -> Problem:
    """The response's problem document; missing fields are filled from the status (e.g. a plain
    ``{"detail": ...}`` body from a proxy or framework default handler)."""
    status = response.status_code
    title = title_of(status)
    defaults: dict[str, object] = {"title": title, "status": status, "code": _fallback_code(status)}
    try:
        body = json.loads(response.content) if response.content else None
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        merged = {**defaults, **body}
        detail = body.get("detail")
        if isinstance(detail, list) and "errors" not in body and all(isinstance(e, dict) for e in detail):
            merged["errors"] = detail
        if not isinstance(detail, str):
            merged["detail"] = title if detail is None else json.dumps(detail)[:_DETAIL_LIMIT]
        try:
            return Problem.model_validate(merged)
        except _PydanticValidationError:
            pass
    text = response.text[:_DETAIL_LIMIT] if response.content else ""
    return Problem(title=title, status=status, detail=text or title, code=_fallback_code(status))


def error_from_response(response: httpx.Response) -> APIStatusError:
    return error_class_for_status(response.status_code)(problem_from_response(response), response=response)
