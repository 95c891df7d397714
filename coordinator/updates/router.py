"""/v1/federations/{fid}/rounds/{r}/updates: a client's result for a round."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from coordinator.auth import Principal, require_client, require_watcher
from coordinator.bodies import check_declared_length, require_tensor_media_type, stream_capped_body
from coordinator.core import Services, get_services
from coordinator.limits import UPDATE_UPLOAD_SLOT
from coordinator.observability import UPDATE_BYTES, UPDATE_REFUSALS, UPDATES
from coordinator.openapi import RECEIPT_EXAMPLE, SAFETENSORS_BODY, example, problems
from coordinator.problems import ProblemError
from coordinator.rounds.closing import close_if_due
from coordinator.updates import service
from mfcpl.wire.constants import IDEMPOTENCY_HEADER, SHARED_LEVEL
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import UpdateReceipt

router = APIRouter(prefix="/federations/{fid}/rounds/{r}/updates", tags=["updates"])


@router.post(
    "", status_code=201, response_model=UpdateReceipt, summary="Submit an update for a round",
    description="The body is a safetensors document (`mfcpl.update.v1`): `weights/<name>` for every tensor of the "
    "round's input model (same shapes and dtypes), optional local prototypes per level "
    f"(`{SHARED_LEVEL}` or a declared modality) with class ids and counts, metadata `num_samples`, "
    "`base_model_version` and `metrics`.\n\n"
    "The update is acknowledged (201) only after its bytes and its row are durably committed. Repeating the same "
    "body (or the same `Idempotency-Key`) answers 200 with `replayed: true`, even after the round closed; a "
    "different body for the same client and round is refused (409 `idempotency_conflict`). Refusals change "
    "nothing: 401 bad token, 403 `not_participant`, 404 unknown round, 409 `round_not_open` / `stale_round` / "
    "`federation_not_running`, 413 too large, 415 wrong media type, 422 `malformed_tensors`, `missing_tensor`, "
    "`unknown_tensor`, `shape_mismatch`, `dtype_mismatch`, `non_finite`, `class_out_of_range`, 429 "
    "`too_many_requests` (this token already has `max_uploads_per_token` uploads in flight; `Retry-After`).",
    openapi_extra=SAFETENSORS_BODY,
    responses={201: example(RECEIPT_EXAMPLE, "Accepted and durable."),
               200: example(RECEIPT_EXAMPLE | {"replayed": True}, "A replay of an accepted update."),
               **problems(401, 403, ErrorCode.NOT_PARTICIPANT, 404, ErrorCode.ROUND_NOT_OPEN, ErrorCode.STALE_ROUND,
                          ErrorCode.FEDERATION_NOT_RUNNING, ErrorCode.IDEMPOTENCY_CONFLICT, 413, 415,
                          ErrorCode.MALFORMED_TENSORS, ErrorCode.SHAPE_MISMATCH, 429)},
)
async def post_update(
    fid: str, r: int, request: Request,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER, max_length=200)] = None,
    principal: Principal = Depends(require_client), services: Services = Depends(get_services),
    _slot: None = UPDATE_UPLOAD_SLOT,
) -> JSONResponse:
    assert principal.client_id is not None
    try:
        require_tensor_media_type(request)
        limit = services.settings.max_update_bytes
        check_declared_length(request, limit)
        # Refusals that need no body (closed round, not a participant, ...) answer before it is read.
        admission = await run_in_threadpool(service.admit, services, fid, r, principal.client_id, idempotency_key)
        upload = services.blobs.begin_upload(durable=not admission.reported)
        try:
            await stream_capped_body(request, limit, upload)
            result = await run_in_threadpool(service.ingest_upload, services, admission, upload, idempotency_key)
        finally:
            upload.close()
    except ProblemError as exc:
        UPDATES.labels("refused").inc()
        UPDATE_REFUSALS.labels(exc.code).inc()
        raise
    if not result.created:
        UPDATES.labels("replayed").inc()
        return JSONResponse(result.receipt.model_dump(mode="json"), status_code=200)
    UPDATES.labels("accepted").inc()
    UPDATE_BYTES.inc(result.receipt.size_bytes)
    # The last participant's update closes the round right after the response, without waiting for the timer.
    background = BackgroundTask(close_if_due, services, fid, r) if result.round_complete else None
    return JSONResponse(result.receipt.model_dump(mode="json"), status_code=201, background=background)


@router.get("", response_model=list[UpdateReceipt], summary="List a round's accepted updates",
            responses={200: example([RECEIPT_EXAMPLE]), **problems(401, 403, 404)})
def list_updates(fid: str, r: int, _: Principal = Depends(require_watcher),
                 services: Services = Depends(get_services)) -> list[UpdateReceipt]:
    return service.list_updates(services, fid, r)
