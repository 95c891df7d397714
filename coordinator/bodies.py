"""Reading safetensors request bodies: media-type check, streamed read with a size cap, one buffer."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from client_sdk.schemas import SAFETENSORS_CONTENT_TYPE, ErrorCode
from coordinator.problems import TENSOR_CONTENT_TYPES, ProblemError


def require_tensor_media_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in TENSOR_CONTENT_TYPES:
        raise ProblemError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                           f"send the body as {SAFETENSORS_CONTENT_TYPE} (got {content_type or 'no Content-Type'})")


async def read_capped_body(request: Request, limit: int, hasher: Any = None) -> bytearray:
    """The whole body in one preallocated buffer when Content-Length is given; 413 past ``limit``.

    ``hasher`` (a hashlib object) is fed chunk by chunk, so hashing overlaps the transfer instead of
    following it.
    """
    declared = request.headers.get("content-length")
    too_large = ProblemError(413, ErrorCode.PAYLOAD_TOO_LARGE, f"body exceeds the limit of {limit} bytes")
    if declared is not None and declared.isdigit():
        size = int(declared)
        if size > limit:
            raise too_large
        buf = bytearray(size)
        pos = 0
        async for chunk in request.stream():
            end = pos + len(chunk)
            if end > size:
                raise ProblemError(400, ErrorCode.BAD_REQUEST, "body is longer than its Content-Length")
            buf[pos:end] = chunk
            pos = end
            if hasher is not None:
                hasher.update(chunk)
        if pos != size:
            raise ProblemError(400, ErrorCode.BAD_REQUEST, f"body ended after {pos} of {size} bytes")
        return buf
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise too_large
        if hasher is not None:
            hasher.update(chunk)
    return buf


def etag_of(sha256: str) -> str:
    return f'"{sha256}"'


def not_modified(request: Request, sha256: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag_of(sha256) in tags


def blob_response(request: Request, data: bytes | memoryview, sha256: str) -> Response:
    headers = {"ETag": etag_of(sha256), "Cache-Control": "public, max-age=31536000, immutable"}
    if not_modified(request, sha256):
        return Response(status_code=304, headers=headers)
    return Response(content=bytes(data), media_type=SAFETENSORS_CONTENT_TYPE, headers=headers)
