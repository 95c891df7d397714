"""/v1/viewer-tokens: read-only tokens the operator mints and revokes (sharing a dashboard, not the admin token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from coordinator.auth import Principal, require_admin
from coordinator.core import Services, get_services
from coordinator.openapi import TIME, example, problems
from coordinator.viewers import service
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import ViewerToken, ViewerTokenCreate, ViewerTokenCreated

router = APIRouter(prefix="/viewer-tokens", tags=["viewer tokens"])

VIEWER_EXAMPLE = {"id": "vwt_5e6f7a8b9c0d1e2f", "label": "lab dashboard", "revoked": False, "created_at": TIME,
                  "revoked_at": None}


@router.post("", status_code=201, response_model=ViewerTokenCreated, summary="Mint a viewer token",
             description="A read-only token: it lists and reads federations, rounds, metrics, clients' public state, "
             "model versions and prototypes (summaries and downloads) and events, and is refused (403 `forbidden`) "
             "on every write, enrolment and status change. **The token is shown only here**; the coordinator keeps "
             "only its sha256.",
             responses={201: example({**VIEWER_EXAMPLE, "token": "mfcpl_v_..."}, "The new token (shown once)."),
                        **problems(401, 403, 413, 422)})
def create_viewer_token(
    body: Annotated[ViewerTokenCreate, Body(openapi_examples={"dashboard": {"value": {"label": "lab dashboard"}}})],
    _: Principal = Depends(require_admin), services: Services = Depends(get_services),
) -> ViewerTokenCreated:
    return service.create(services, body.label)


@router.get("", response_model=list[ViewerToken], summary="List viewer tokens",
            description="Every viewer token, revoked ones included, oldest first (never the tokens themselves).",
            responses={200: example([VIEWER_EXAMPLE]), **problems(401, 403)})
def list_viewer_tokens(_: Principal = Depends(require_admin),
                       services: Services = Depends(get_services)) -> list[ViewerToken]:
    return service.list_tokens(services)


@router.delete("/{token_id}", response_model=ViewerToken, summary="Revoke a viewer token",
               description="The token stops working at once (401). Revoking a revoked token answers it again.",
               responses={200: example({**VIEWER_EXAMPLE, "revoked": True, "revoked_at": TIME}),
                          **problems(401, 403, (ErrorCode.NOT_FOUND, "viewer token vwt_5e6f7a8b9c0d1e2f does not "
                                                                     "exist"))})
def revoke_viewer_token(token_id: str, _: Principal = Depends(require_admin),
                        services: Services = Depends(get_services)) -> ViewerToken:
    return service.revoke(services, token_id)
