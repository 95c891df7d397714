"""Error codes: the stable ``code`` of every problem document, with the HTTP status each one answers.

:data:`ERROR_STATUS` is the one table of codes and statuses: the coordinator raises problems from it, the
OpenAPI document lists it, and the SDK maps statuses to exception classes with it.
"""

from __future__ import annotations

from enum import StrEnum
from http import HTTPStatus


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    VALIDATION_ERROR = "validation_error"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    MALFORMED_TENSORS = "malformed_tensors"
    MISSING_TENSOR = "missing_tensor"
    UNKNOWN_TENSOR = "unknown_tensor"
    SHAPE_MISMATCH = "shape_mismatch"
    DTYPE_MISMATCH = "dtype_mismatch"
    NON_FINITE = "non_finite"
    CLASS_OUT_OF_RANGE = "class_out_of_range"
    NOT_PARTICIPANT = "not_participant"
    ROUND_NOT_OPEN = "round_not_open"
    STALE_ROUND = "stale_round"
    FEDERATION_NOT_RUNNING = "federation_not_running"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    TOO_MANY_REQUESTS = "too_many_requests"
    REQUEST_TIMEOUT = "request_timeout"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    INTERNAL = "internal_error"
    DATABASE_BUSY = "database_busy"
    DATABASE_UNAVAILABLE = "database_unavailable"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    STORAGE_FULL = "storage_full"


ERROR_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.MALFORMED_TENSORS: 422,
    ErrorCode.MISSING_TENSOR: 422,
    ErrorCode.UNKNOWN_TENSOR: 422,
    ErrorCode.SHAPE_MISMATCH: 422,
    ErrorCode.DTYPE_MISMATCH: 422,
    ErrorCode.NON_FINITE: 422,
    ErrorCode.CLASS_OUT_OF_RANGE: 422,
    ErrorCode.NOT_PARTICIPANT: 403,
    ErrorCode.ROUND_NOT_OPEN: 409,
    ErrorCode.STALE_ROUND: 409,
    ErrorCode.FEDERATION_NOT_RUNNING: 409,
    ErrorCode.IDEMPOTENCY_CONFLICT: 409,
    ErrorCode.TOO_MANY_REQUESTS: 429,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.INTERNAL: 500,
    ErrorCode.DATABASE_BUSY: 503,
    ErrorCode.DATABASE_UNAVAILABLE: 503,
    ErrorCode.STORAGE_UNAVAILABLE: 503,
    ErrorCode.STORAGE_FULL: 507,
}
"""The HTTP status each code answers with (every code has exactly one)."""

GENERIC_CODE: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    408: ErrorCode.REQUEST_TIMEOUT,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    422: ErrorCode.VALIDATION_ERROR,
    500: ErrorCode.INTERNAL,
}
"""The code of a status when nothing more specific is known (framework errors, unknown codes)."""

RETRYABLE_CODES: frozenset[ErrorCode] = frozenset({
    ErrorCode.DATABASE_BUSY, ErrorCode.DATABASE_UNAVAILABLE, ErrorCode.STORAGE_UNAVAILABLE,
})
"""Faults of the service that pass by themselves: answered 503 with ``Retry-After``; a client retries them.
``storage_full`` (507) needs an operator and is not retried."""


def status_of(code: str) -> int:
    """The HTTP status of ``code``; 500 for a code this version does not know."""
    try:
        return ERROR_STATUS[ErrorCode(code)]
    except ValueError:
        return 500


def title_of(status: int) -> str:
    """The problem document's ``title`` for ``status``: its HTTP reason phrase (``HTTP <status>`` if unnamed)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
