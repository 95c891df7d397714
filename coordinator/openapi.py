"""OpenAPI helpers: problem responses and examples shared by the routers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fastapi.routing
from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute

from coordinator.auth import FORBIDDEN_DETAIL, ROLES_OF
from mfcpl.wire.constants import PROBLEM_CONTENT_TYPE, SAFETENSORS_CONTENT_TYPE, SHARED_LEVEL
from mfcpl.wire.errors import ERROR_STATUS, GENERIC_CODE, ErrorCode, title_of
from mfcpl.wire.schemas import Problem

FID = "fed_3f2a9c1d4b5e6f70"
CID = "cli_9a8b7c6d5e4f3a21"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
TIME = "2026-01-01T12:00:00Z"

# One example detail per code the routers document. ``problems()`` takes a status (its generic code: 403
# `forbidden`, 409 `conflict`, 422 `validation_error`, ...) or the specific codes an operation can answer, so no
# operation shows an error that cannot happen there (a round's `round_not_open` on an enrolment, say).
_PROBLEM_DETAILS: dict[ErrorCode, str] = {
    ErrorCode.BAD_REQUEST: "malformed request",
    ErrorCode.UNAUTHORIZED: "unknown token",
    ErrorCode.FORBIDDEN: "this endpoint needs the operator (admin) token",
    ErrorCode.NOT_PARTICIPANT: f"client {CID} was not sampled for round 3",
    ErrorCode.NOT_FOUND: f"federation {FID} does not exist",
    ErrorCode.CONFLICT: "the request conflicts with the resource's current state",
    ErrorCode.ROUND_NOT_OPEN: "round 3 is closed, not open",
    ErrorCode.STALE_ROUND: "round 2 is not the open round (3)",
    ErrorCode.FEDERATION_NOT_RUNNING: f"federation {FID} is completed",
    ErrorCode.IDEMPOTENCY_CONFLICT: "this Idempotency-Key was used for a different request",
    ErrorCode.PAYLOAD_TOO_LARGE: "body of 300000000 bytes exceeds the limit of 268435456",
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: "send the body as application/vnd.safetensors",
    ErrorCode.VALIDATION_ERROR: "body.name: Field required",
    ErrorCode.MALFORMED_TENSORS: "the safetensors header is not valid JSON",
    ErrorCode.NON_FINITE: "metrics hold NaN or Inf",
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


PROBLEM_EXAMPLES: dict[ErrorCode, dict[str, Any]] = {
    code: problem_example(code, detail) for code, detail in _PROBLEM_DETAILS.items()
}
"""The example problem document of each code the routers document."""

_DEFAULT_CODE: dict[int, ErrorCode] = {**GENERIC_CODE, 429: ErrorCode.TOO_MANY_REQUESTS}

ProblemSpec = int | ErrorCode | tuple[ErrorCode, str]
"""A status (its generic code), a code, or a code with an operation's own example detail."""


def problem_response(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``responses=`` entry: the Problem schema as application/problem+json, with these examples."""
    media: dict[str, Any] = {"schema": {"$ref": "#/components/schemas/Problem"}}
    if len(examples) == 1:
        media["example"] = examples[0]
    else:
        media["examples"] = {e["code"]: {"summary": e["code"], "value": e} for e in examples}
    return {"model": Problem, "description": examples[0]["title"] + ": " + ", ".join(
        f"`{e['code']}`" for e in examples), "content": {PROBLEM_CONTENT_TYPE: media}}


def problems(*specs: ProblemSpec) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting problem+json errors: ``problems(401, 404, ErrorCode.ROUND_NOT_OPEN)``."""
    by_status: dict[int, list[dict[str, Any]]] = {}
    for spec in specs:
        if isinstance(spec, tuple):
            code, detail = spec
            value = problem_example(code, detail)
        else:
            code = spec if isinstance(spec, ErrorCode) else _DEFAULT_CODE[spec]
            value = PROBLEM_EXAMPLES[code]
        by_status.setdefault(ERROR_STATUS[code], []).append(value)
    return {status: problem_response(examples) for status, examples in by_status.items()}


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


def _auth_dependencies(dependant: Dependant) -> set[Callable[..., Any]]:
    found: set[Callable[..., Any]] = set()
    for sub in dependant.dependencies:
        if sub.call in ROLES_OF:
            found.add(sub.call)
        found |= _auth_dependencies(sub)
    return found


def _operation_auth(app: FastAPI) -> dict[tuple[str, str], Callable[..., Any]]:
    """(path, method) -> the route's auth dependency (one of ``coordinator.auth.ROLES_OF``)."""
    table: dict[tuple[str, str], Callable[..., Any]] = {}
    # FastAPI >= 0.16x keeps included routers as such; iter_route_contexts yields their routes with the prefix.
    iter_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    routes: list[Any] = list(iter_contexts(app.routes)) if iter_contexts is not None else list(app.routes)
    for route in routes:
        if not isinstance(getattr(route, "original_route", route), APIRoute) or not route.include_in_schema:
            continue
        deps = _auth_dependencies(route.dependant)
        if len(deps) > 1:
            raise RuntimeError(f"{route.path} depends on several auth dependencies: {deps}")
        for method in route.methods:
            if deps:
                table[(route.path_format, method.lower())] = next(iter(deps))
    return table


_ROLE_NAMES = {"admin": "the operator (admin) token", "viewer": "a viewer token",
               "client": "a client token of this federation"}


def document_auth(app: FastAPI, document: dict[str, Any]) -> dict[str, Any]:
    """Per operation: the roles it accepts (``x-mfcpl-roles``, also in its description), its 401 and 403 as
    problem documents with the examples of its auth dependency, and 422 as a problem (not FastAPI's
    ``HTTPValidationError``); operations without auth get no security requirement."""
    auth = _operation_auth(app)
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            dependency = auth.get((path, method))
            if dependency is None:
                operation.pop("security", None)
            else:
                roles = list(ROLES_OF[dependency])
                operation["x-mfcpl-roles"] = roles
                operation["security"] = [{"bearer": []}]
                accepted = " or ".join(_ROLE_NAMES[role] for role in roles)
                operation["description"] = (operation.get("description", "") + f"\n\n**Auth:** {accepted}.").strip()
                responses["401"] = problem_response([PROBLEM_EXAMPLES[ErrorCode.UNAUTHORIZED]])
                responses["401"].pop("model")
                forbidden = [problem_example(ErrorCode.FORBIDDEN, FORBIDDEN_DETAIL[dependency])]
                documented = responses.get("403", {}).get("content", {}).get(PROBLEM_CONTENT_TYPE, {})
                others = [documented["example"]] if "example" in documented else [
                    entry["value"] for entry in documented.get("examples", {}).values()]
                forbidden += [e for e in others if e["code"] != ErrorCode.FORBIDDEN]
                responses["403"] = problem_response(forbidden)
                responses["403"].pop("model")
            for status, entry in list(responses.items()):
                content = entry.get("content", {})
                if status == "422" and PROBLEM_CONTENT_TYPE not in content:  # FastAPI's own HTTPValidationError
                    responses[status] = problem_response([PROBLEM_EXAMPLES[ErrorCode.VALIDATION_ERROR]])
                    responses[status].pop("model")
                elif PROBLEM_CONTENT_TYPE in content:
                    content.pop("application/json", None)  # FastAPI's copy of the Problem model under JSON
                    content[PROBLEM_CONTENT_TYPE]["schema"] = {"$ref": "#/components/schemas/Problem"}
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve the generated document with :func:`document_auth` and :func:`integer_bounds` applied."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = integer_bounds(document_auth(app, generate()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


REDOC_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
             "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'")
"""ReDoc's bundle links a logo on cdn.redoc.ly: the page may load nothing but the coordinator's own assets."""


def install_redoc(app: FastAPI, static_url: str) -> None:
    """/redoc from the installed ReDoc bundle, without Google fonts, and nothing from another origin (CSP)."""

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{static_url}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{static_url}/favicon.png", with_google_fonts=False)
        page.headers["Content-Security-Policy"] = REDOC_CSP
        return page
