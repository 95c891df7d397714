"""OpenAPI helpers: problem responses and examples shared by the routers."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from mfcpl.wire.constants import PROBLEM_CONTENT_TYPE, SAFETENSORS_CONTENT_TYPE, SHARED_LEVEL
from mfcpl.wire.errors import ERROR_STATUS, ErrorCode, title_of
from mfcpl.wire.schemas import Problem

FID = "fed_3f2a9c1d4b5e6f70"
CID = "cli_9a8b7c6d5e4f3a21"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
TIME = "2026-01-01T12:00:00Z"

# One example problem per documented status: its code (the status comes from the code table) and a detail.
_PROBLEM_EXAMPLES: dict[ErrorCode, str] = {
    ErrorCode.BAD_REQUEST: "malformed request",
    ErrorCode.UNAUTHORIZED: "unknown token",
    ErrorCode.NOT_PARTICIPANT: f"client {CID} was not sampled for round 3",
    ErrorCode.NOT_FOUND: f"federation {FID} does not exist",
    ErrorCode.ROUND_NOT_OPEN: "round 3 is closed, not open",
    ErrorCode.PAYLOAD_TOO_LARGE: "body of 300000000 bytes exceeds the limit of 268435456",
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: "send the body as application/vnd.safetensors",
    ErrorCode.SHAPE_MISMATCH: "tensor weights/'fc.weight' has shape [6, 64], the model's is [6, 32]",
    ErrorCode.TOO_MANY_REQUESTS: "this token already holds 2 concurrent uploads (the limit per token); retry once "
    "one has finished",
}

# The document names 413 and 422 as RFC 9110 does; Python 3.11's reason phrases (the titles the service sends
# there) are the older "Request Entity Too Large" and "Unprocessable Entity".
_DOCUMENTED_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


def problem_example(code: ErrorCode, detail: str) -> dict[str, Any]:
    """An example problem document for ``code``."""
    status = ERROR_STATUS[code]
    return {"title": _DOCUMENTED_TITLES.get(status) or title_of(status), "status": status, "code": str(code),
            "detail": detail}


PROBLEM_EXAMPLES: dict[int, dict[str, Any]] = {
    ERROR_STATUS[code]: problem_example(code, detail) for code, detail in _PROBLEM_EXAMPLES.items()
}
"""The example problem document of each status the routers document."""


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting problem+json errors."""
    return {
        status: {
            "model": Problem,
            "description": PROBLEM_EXAMPLES[status]["title"],
            "content": {PROBLEM_CONTENT_TYPE: {"example": PROBLEM_EXAMPLES[status]}},
        }
        for status in statuses
    }


SAFETENSORS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            SAFETENSORS_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def safetensors_response(description: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"description": description, "content": {SAFETENSORS_CONTENT_TYPE: {
            "schema": {"type": "string", "format": "binary"}}},
              "headers": {"ETag": {"description": "sha256 of the body, quoted", "schema": {"type": "string"}}}},
        304: {"description": "Not modified: the If-None-Match ETag matches."},
    }


FEDERATION_CREATE_EXAMPLE: dict[str, Any] = {
    "name": "uci-har-q0.8",
    "algorithm": "mfcpl",
    "num_classes": 6,
    "modalities": [{"name": "acc", "kind": "timeseries", "shape": [128, 3]},
                   {"name": "gyro", "kind": "timeseries", "shape": [128, 3]}],
    "rounds": 200,
    "clients_per_round": 10,
    "quorum": 8,
    "round_deadline_s": 600,
    "seed": 8,
    "training": {"local_epochs": 1, "batch_size": 16, "lr": 0.05},
}

FEDERATION_EXAMPLE: dict[str, Any] = {
    "id": FID, "status": "running", "status_reason": "round 3 open: 4 of 10 updates received (quorum 8)",
    "config": FEDERATION_CREATE_EXAMPLE, "current_round": 3,
    "latest_model_version": 2, "created_at": TIME, "updated_at": TIME,
}

CLIENT_EXAMPLE: dict[str, Any] = {
    "id": CID, "federation_id": FID, "name": "subject-01-shard-0", "revoked": False, "modalities": ["acc"],
    "class_counts": [12, 0, 5, 30, 2, 9], "num_samples": 58, "last_seen_at": TIME, "lease_expires_at": TIME,
    "created_at": TIME,
}

TASK_TRAIN_EXAMPLE: dict[str, Any] = {
    "action": "train", "federation_id": FID, "round": 3, "model_version": 2, "model_sha256": SHA,
    "prototype_version": 2, "prototype_sha256": SHA, "deadline": TIME, "seed": 1234567, "algorithm": "mfcpl",
    "training": {"local_epochs": 1, "batch_size": 16, "lr": 0.05},
}

ROUND_EXAMPLE: dict[str, Any] = {
    "federation_id": FID, "number": 3, "state": "closed", "seed": 987654321, "participants": [CID], "received": 1,
    "quorum": 1, "input_model_version": 2, "output_model_version": 3, "prototype_version": 3, "deadline": TIME,
    "opened_at": TIME, "closed_at": TIME, "failure_reason": None, "train_metrics": {"loss": 0.41, "accuracy": 0.87},
}

MODEL_VERSION_EXAMPLE: dict[str, Any] = {
    "federation_id": FID, "version": 3, "sha256": SHA, "size_bytes": 1203512, "round": 3, "created_at": TIME,
}

PROTOTYPE_SET_EXAMPLE: dict[str, Any] = {
    "federation_id": FID, "version": 3, "sha256": SHA, "created_at": TIME,
    "levels": [{"name": SHARED_LEVEL, "dim": 128, "coverage": [True, True, False, True, True, True],
                "counts": [40.0, 12.0, 0.0, 33.0, 8.0, 19.0]}],
}

RECEIPT_EXAMPLE: dict[str, Any] = {
    "id": "upd_0a1b2c3d4e5f6a7b", "federation_id": FID, "round": 3, "client_id": CID, "num_samples": 58,
    "sha256": SHA, "size_bytes": 1204000, "received_at": TIME, "replayed": False,
}


def example(value: Any, description: str = "") -> dict[str, Any]:
    return {"content": {"application/json": {"example": value}}, "description": description or "OK"}


_BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def integer_bounds(node: Any) -> Any:
    """``node`` (an OpenAPI document or part of one) with the bounds of ``integer`` schemas as JSON integers.

    FastAPI's OpenAPI model types every bound as a float, so ``lt=2**63`` would be published as
    ``9.223372036854776e+18``; a bound that is a whole number is turned back into an int (exact for the bounds
    used here, which are small or powers of two).
    """
    if isinstance(node, list):
        return [integer_bounds(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: integer_bounds(value) for key, value in node.items()}
    if out.get("type") == "integer":
        for key in _BOUND_KEYS:
            value = out.get(key)
            if isinstance(value, float) and value.is_integer():
                out[key] = int(value)
    return out


def install_openapi(app: FastAPI) -> None:
    """Serve the generated document with :func:`integer_bounds` applied."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = integer_bounds(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
