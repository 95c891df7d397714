"""/v1/federations/{fid}/clients: enrolment (admin), revocation, and a client's own profile."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse

from coordinator.auth import Principal, require_admin, require_client, require_watcher
from coordinator.clients import service
from coordinator.core import Services, get_services
from coordinator.idempotency import Created, IdempotencyKey, idempotent
from coordinator.openapi import CLIENT_EXAMPLE, example, problems
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import Client, ClientEnroll, ClientEnrolled, ClientProfile

router = APIRouter(prefix="/federations/{fid}/clients", tags=["clients"])


@router.post("", status_code=201, response_model=ClientEnrolled, summary="Enrol a client",
             description="Creates a client and returns its bearer token. **The token is shown only here**; the "
             "coordinator keeps only its sha256. Names are unique within a federation. With `Idempotency-Key`, a "
             "retry by the same admin token answers the same client and token again (409 `idempotency_conflict` for "
             "a different body).",
             responses={201: example({**CLIENT_EXAMPLE, "modalities": None, "class_counts": None,
                                      "token": "mfcpl_c_..."}),
                        **problems(401, 403, 404, (ErrorCode.CONFLICT, "a client named 'node-07' is already enrolled"),
                                   ErrorCode.FEDERATION_NOT_RUNNING, ErrorCode.IDEMPOTENCY_CONFLICT, 413, 422)})
def enroll(fid: str, body: Annotated[ClientEnroll, Body(openapi_examples={"one": {"value": {"name": "node-07"}}})],
           request: Request, idempotency_key: IdempotencyKey = None,
           _: Principal = Depends(require_admin), services: Services = Depends(get_services)) -> JSONResponse:
    return idempotent(services, request, idempotency_key, body,
                      lambda: Created(201, service.enroll(services, fid, body.name), sealed=("token",)))


@router.get("", response_model=list[Client], summary="List clients",
            description="Every enrolled client with its profile and lease.",
            responses={200: example([CLIENT_EXAMPLE]), **problems(401, 403, 404)})
def list_clients(fid: str, _: Principal = Depends(require_watcher),
                 services: Services = Depends(get_services)) -> list[Client]:
    return service.list_clients(services, fid)


@router.get("/me", response_model=Client, summary="The calling client",
            description="The client that owns the bearer token.",
            responses={200: example(CLIENT_EXAMPLE), **problems(401, 403)})
def me(fid: str, principal: Principal = Depends(require_client),
       services: Services = Depends(get_services)) -> Client:
    assert principal.client_id is not None
    return service.get_client(services, fid, principal.client_id)


@router.put("/me/profile", response_model=Client, summary="Report modalities and class counts",
            description="A client states which declared modalities it holds and its training samples per class. "
            "Only clients that hold at least one modality are sampled for rounds. Also renews the lease.",
            responses={200: example(CLIENT_EXAMPLE), **problems(401, 403, 413, 422)})
def put_profile(
    fid: str,
    profile: Annotated[ClientProfile, Body(openapi_examples={"acc only": {"value": {
        "modalities": ["acc"], "class_counts": [12, 0, 5, 30, 2, 9], "num_samples": 58}}})],
    principal: Principal = Depends(require_client), services: Services = Depends(get_services),
) -> Client:
    assert principal.client_id is not None
    return service.set_profile(services, fid, principal.client_id, profile)


@router.delete("/{cid}", response_model=Client, summary="Revoke a client",
               description="Its token stops working at once and it is no longer sampled. Its accepted updates stay.",
               responses={200: example({**CLIENT_EXAMPLE, "revoked": True}), **problems(401, 403, 404)})
def revoke(fid: str, cid: str, _: Principal = Depends(require_admin),
           services: Services = Depends(get_services)) -> Client:
    return service.revoke(services, fid, cid)
