"""OpenAPI helpers: problem responses and examples shared by the routers."""

from __future__ import annotations

from typing import Any

from mfcpl.wire.constants import PROBLEM_CONTENT_TYPE, SAFETENSORS_CONTENT_TYPE
from mfcpl.wire.schemas import Problem

FID = "fed_3f2a9c1d4b5e6f70"
CID = "cli_9a8b7c6d5e4f3a21"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
TIME = "2026-01-01T12:00:00Z"

_PROBLEM_EXAMPLES: dict[int, dict[str, Any]] = {
    400: {"title": "Bad Request", "status": 400, "code": "bad_request", "detail": "malformed request"},
    401: {"title": "Unauthorized", "status": 401, "code": "unauthorized", "detail": "unknown token"},
    403: {"title": "Forbidden", "status": 403, "code": "not_participant",
          "detail": f"client {CID} was not sampled for round 3"},
    404: {"title": "Not Found", "status": 404, "code": "not_found", "detail": f"federation {FID} does not exist"},
    409: {"title": "Conflict", "status": 409, "code": "round_not_open", "detail": "round 3 is closed, not open"},
    413: {"title": "Content Too Large", "status": 413, "code": "payload_too_large",
          "detail": "body of 300000000 bytes exceeds the limit of 268435456"},
    415: {"title": "Unsupported Media Type", "status": 415, "code": "unsupported_media_type",
          "detail": "send the body as application/vnd.safetensors"},
    422: {"title": "Unprocessable Content", "status": 422, "code": "shape_mismatch",
          "detail": "tensor weights/'fc.weight' has shape [6, 64], the model's is [6, 32]"},
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting problem+json errors."""
    return {
        status: {
            "model": Problem,
            "description": _PROBLEM_EXAMPLES[status]["title"],
            "content": {PROBLEM_CONTENT_TYPE: {"example": _PROBLEM_EXAMPLES[status]}},
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
    "id": FID, "status": "running", "config": FEDERATION_CREATE_EXAMPLE, "current_round": 3,
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
    "levels": [{"name": "shared", "dim": 128, "coverage": [True, True, False, True, True, True],
                "counts": [40.0, 12.0, 0.0, 33.0, 8.0, 19.0]}],
}

RECEIPT_EXAMPLE: dict[str, Any] = {
    "id": "upd_0a1b2c3d4e5f6a7b", "federation_id": FID, "round": 3, "client_id": CID, "num_samples": 58,
    "sha256": SHA, "size_bytes": 1204000, "received_at": TIME, "replayed": False,
}


def example(value: Any, description: str = "") -> dict[str, Any]:
    return {"content": {"application/json": {"example": value}}, "description": description or "OK"}
