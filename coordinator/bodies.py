"""Reading safetensors request bodies: media-type check, streamed read with a size cap (into one buffer, or
fed to a sink chunk by chunk)."""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import Request, Response

from coordinator.blobs import Buffer
from coordinator.numbers import NumberTextError, parse_ascii_int
from coordinator.problems import TENSOR_CONTENT_TYPES, ProblemError
from mfcpl.wire.constants import SAFETENSORS_CONTENT_TYPE
from mfcpl.wire.errors import ErrorCode


def require_tensor_media_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in TENSOR_CONTENT_TYPES:
        raise ProblemError(ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                           f"send the body as {SAFETENSORS_CONTENT_TYPE} (got {content_type or 'no Content-Type'})")


async def read_capped_body(request: Request, limit: int, hasher: Any = None) -> bytearray:
    """The whole body in one buffer that grows as the bytes arrive; 413 past ``limit``.

    Nothing is allocated for a declared Content-Length: memory follows the bytes received, so a client that
    declares 256 MiB and sends 16 bytes costs 16 bytes. 400 when the body is shorter or longer than declared.
    ``hasher`` (a hashlib object) is fed chunk by chunk, so hashing overlaps the transfer instead of
    following it.
    """
    size = check_declared_length(request, limit)
    cap = limit if size is None else size
    buf = bytearray()
    async for chunk in request.stream():
        if len(buf) + len(chunk) > cap:
            if size is not None:
                raise ProblemError(ErrorCode.BAD_REQUEST, "body is longer than its Content-Length")
            raise ProblemError(ErrorCode.PAYLOAD_TOO_LARGE, f"body exceeds the limit of {limit} bytes")
        buf += chunk
        if hasher is not None:
            hasher.update(chunk)
    if size is not None and len(buf) != size:
        raise ProblemError(ErrorCode.BAD_REQUEST, f"body ended after {len(buf)} of {size} bytes")
    return buf


class BodySink(Protocol):
    def feed(self, chunks: list[bytes]) -> None: ...

    def finish(self) -> None: ...


# Chunks are handed to the sink in batches of about this many bytes: few enough hand-offs to a writer thread,
# small enough that writing and hashing follow the transfer closely.
SINK_BATCH_BYTES = 512 * 1024


def check_declared_length(request: Request, limit: int) -> int | None:
    """The Content-Length, if given; 413 at once when it exceeds ``limit`` (before anything else is done)."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    try:
        size = parse_ascii_int(declared.strip(), maximum=2**63 - 1)
    except NumberTextError as exc:
        if not exc.out_of_range:
            return None
        size = limit + 1
    if size > limit:
        raise ProblemError(ErrorCode.PAYLOAD_TOO_LARGE, f"body exceeds the limit of {limit} bytes")
    return size


async def stream_capped_body(request: Request, limit: int, sink: BodySink) -> int:
    """Feed the body to ``sink`` in batches as it arrives (no copy, no hashing on the event loop); its size.

    413 past ``limit``; 400 when the body is shorter or longer than its Content-Length. ``sink.finish()`` is
    called only after a complete body.
    """
    declared = check_declared_length(request, limit)
    cap = limit if declared is None else declared
    received = 0
    batch: list[bytes] = []
    batch_bytes = 0
    async for chunk in request.stream():
        if not chunk:
            continue
        received += len(chunk)
        if received > cap:
            if declared is not None:
                raise ProblemError(ErrorCode.BAD_REQUEST, "body is longer than its Content-Length")
            raise ProblemError(ErrorCode.PAYLOAD_TOO_LARGE, f"body exceeds the limit of {limit} bytes")
        batch.append(chunk)
        batch_bytes += len(chunk)
        if batch_bytes >= SINK_BATCH_BYTES:
            sink.feed(batch)
            batch, batch_bytes = [], 0
    if declared is not None and received != declared:
        raise ProblemError(ErrorCode.BAD_REQUEST, f"body ended after {received} of {declared} bytes")
    if batch:
        sink.feed(batch)
    sink.finish()
    return received


def etag_of(sha256: str) -> str:
    return f'"{sha256}"'


def not_modified(request: Request, sha256: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag_of(sha256) in tags


def blob_response(request: Request, data: Buffer, sha256: str) -> Response:
    headers = {"ETag": etag_of(sha256), "Cache-Control": "public, max-age=31536000, immutable"}
    if not_modified(request, sha256):
        return Response(status_code=304, headers=headers)
    return Response(content=bytes(data), media_type=SAFETENSORS_CONTENT_TYPE, headers=headers)
