"""/v1/federations: create, list, read, pause, resume, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse

from coordinator.auth import Principal, require_admin, require_reader, require_watcher
from coordinator.core import Services, get_services
from coordinator.federations import service
from coordinator.idempotency import Created, IdempotencyKey, idempotent
from coordinator.openapi import FEDERATION_CREATE_EXAMPLE, FEDERATION_EXAMPLE, example, problems
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import Federation, FederationCreate

router = APIRouter(prefix="/federations", tags=["federations"])


@router.post(
    "", status_code=201, response_model=Federation, summary="Create a federation",
    description="Creates a federation from its full configuration (algorithm, classes, modalities and input shapes, "
    "model settings, training hyper-parameters, rounds, clients per round, quorum, deadline, seed). It starts in "
    "`waiting`: upload model version 0 and enrol clients; round 1 opens when enough clients are live (`min_clients` "
    "that can train if set, else `clients_per_round` live with at least one able to train; `status_reason` says "
    "what it waits for). "
    "With `Idempotency-Key`, a retry of the same request answers the same federation (409 `idempotency_conflict` "
    "for a different body).",
    responses={201: example(FEDERATION_EXAMPLE, "The new federation."),
               **problems(401, 403, ErrorCode.IDEMPOTENCY_CONFLICT, 413, 422)},
)
def create_federation(
    config: Annotated[FederationCreate, Body(openapi_examples={"uci-har": {"value": FEDERATION_CREATE_EXAMPLE}})],
    request: Request, idempotency_key: IdempotencyKey = None,
    _: Principal = Depends(require_admin), services: Services = Depends(get_services),
) -> JSONResponse:
    return idempotent(services, request, idempotency_key, config,
                      lambda: Created(201, service.create_federation(services, config)))


@router.get("", response_model=list[Federation], summary="List federations",
            description="Every federation, oldest first.", responses={200: example([FEDERATION_EXAMPLE]),
                                                                      **problems(401, 403)})
def list_federations(_: Principal = Depends(require_watcher),
                     services: Services = Depends(get_services)) -> list[Federation]:
    return service.list_federations(services)


@router.get("/{fid}", response_model=Federation, summary="Get a federation",
            description="Configuration, status with `status_reason` (why: what a federation without an open round "
            "waits for, the open round's progress), current round and latest model version. Admin or a client of it.",
            responses={200: example(FEDERATION_EXAMPLE), **problems(401, 403, 404)})
def get_federation(fid: str, _: Principal = Depends(require_reader),
                   services: Services = Depends(get_services)) -> Federation:
    return service.get_federation(services, fid)


_TRANSITION_DOC = problems(401, 403, 404, (ErrorCode.CONFLICT, "federation fed_3f2a9c1d4b5e6f70 is completed; "
                                                               "cannot become paused"))


@router.post("/{fid}/pause", response_model=Federation, summary="Pause a federation",
             description="Stops opening new rounds. A round already open still collects updates and closes.",
             responses={200: example(FEDERATION_EXAMPLE), **_TRANSITION_DOC})
def pause(fid: str, _: Principal = Depends(require_admin), services: Services = Depends(get_services)) -> Federation:
    return service.pause(services, fid)


@router.post("/{fid}/resume", response_model=Federation, summary="Resume a paused federation",
             description="Back to `running` (or `waiting` if no round was ever opened).",
             responses={200: example(FEDERATION_EXAMPLE), **_TRANSITION_DOC})
def resume(fid: str, _: Principal = Depends(require_admin), services: Services = Depends(get_services)) -> Federation:
    return service.resume(services, fid)


@router.post("/{fid}/cancel", response_model=Federation, summary="Cancel a federation",
             description="Ends it for good: an open or closing round fails (reason `federation cancelled`), clients "
             "are told `done`.",
             responses={200: example(FEDERATION_EXAMPLE), **_TRANSITION_DOC})
def cancel(fid: str, _: Principal = Depends(require_admin), services: Services = Depends(get_services)) -> Federation:
    return service.cancel(services, fid)
