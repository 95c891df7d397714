"""Small builders of contract-shaped JSON bodies for the scripted servers."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, Response

from mfcpl.wire.constants import PROBLEM_CONTENT_TYPE

NOW = "2025-01-01T00:00:00Z"


def problem(status: int, code: str, detail: str = "detail", headers: dict[str, str] | None = None) -> Response:
    body = {"type": "about:blank", "title": code.replace("_", " "), "status": status, "detail": detail, "code": code}
    return Response(json.dumps(body), status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=headers)


def federation(fid: str = "fed1", status: str = "running") -> dict[str, Any]:
    return {
        "id": fid,
        "status": status,
        "config": {"name": "demo", "num_classes": 2, "modalities": [{"name": "acc", "kind": "timeseries",
                                                                     "shape": [8, 3]}]},
        "current_round": None,
        "latest_model_version": 0,
        "created_at": NOW,
        "updated_at": NOW,
    }


def model_version(fid: str, version: int, sha: str, size: int) -> dict[str, Any]:
    return {"federation_id": fid, "version": version, "sha256": sha, "size_bytes": size, "round": None,
            "created_at": NOW}


def receipt(fid: str, rnd: int, replayed: bool) -> dict[str, Any]:
    return {"id": "u1", "federation_id": fid, "round": rnd, "client_id": "c1", "num_samples": 5,
            "sha256": "0" * 64, "size_bytes": 10, "received_at": NOW, "replayed": replayed}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)
