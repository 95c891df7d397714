"""/v1/federations: create, list, read, pause, resume, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends
from sqlalchemy import select, update

from coordinator.auth import Principal, require_admin, require_reader
from coordinator.core import Services, get_services
from coordinator.events.service import emit
from coordinator.federations import service
from coordinator.openapi import FEDERATION_CREATE_EXAMPLE, FEDERATION_EXAMPLE, example, problems
from coordinator.problems import ProblemError
from coordinator.rounds.orm import RoundRow
from coordinator.timeutil import utcnow
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import EventType, Federation, FederationCreate, FederationStatus, RoundState

router = APIRouter(prefix="/federations", tags=["federations"])


@router.post(
    "", status_code=201, response_model=Federation, summary="Create a federation",
    description="Creates a federation from its full configuration (algorithm, classes, modalities and input shapes, "
    "model settings, training hyper-parameters, rounds, clients per round, quorum, deadline, seed). It starts in "
    "`waiting`: upload model version 0 and enrol clients; round 1 opens when `min_clients` clients are live.",
    responses={201: example(FEDERATION_EXAMPLE, "The new federation."), **problems(401, 403, 413, 422)},
)
def create_federation(
    config: Annotated[FederationCreate, Body(openapi_examples={"uci-har": {"value": FEDERATION_CREATE_EXAMPLE}})],
    _: Principal = Depends(require_admin), services: Services = Depends(get_services),
) -> Federation:
    with services.db.write() as session:
        row = service.create(session, config)
        return service.to_schema(session, row)


@router.get("", response_model=list[Federation], summary="List federations",
            description="Every federation, oldest first.", responses={200: example([FEDERATION_EXAMPLE]),
                                                                      **problems(401, 403)})
def list_federations(_: Principal = Depends(require_admin),
                     services: Services = Depends(get_services)) -> list[Federation]:
    with services.db.read() as session:
        return [service.to_schema(session, row) for row in service.list_rows(session)]


@router.get("/{fid}", response_model=Federation, summary="Get a federation",
            description="Configuration, status, current round and latest model version. Admin or a client of it.",
            responses={200: example(FEDERATION_EXAMPLE), **problems(401, 403, 404)})
def get_federation(fid: str, _: Principal = Depends(require_reader),
                   services: Services = Depends(get_services)) -> Federation:
    with services.db.read() as session:
        return service.to_schema(session, service.get_row(session, fid))


def _change(services: Services, fid: str, to: FederationStatus, allowed: tuple[FederationStatus, ...]) -> Federation:
    with services.db.write() as session:
        row = service.get_row(session, fid)
        if to == FederationStatus.CANCELLED and row.status in allowed:
            # Lock order everywhere: rounds before the federation row.
            failed = session.execute(
                update(RoundRow).where(RoundRow.federation_id == fid, RoundRow.state == RoundState.OPEN)
                .values(state=RoundState.FAILED, failure_reason="federation cancelled", closed_at=utcnow())
                .returning(RoundRow.number)
            ).scalars().all()
            for number in failed:
                emit(session, fid, EventType.ROUND_FAILED, number, {"reason": "federation cancelled"})
        if not service.transition(session, fid, to, allowed):
            raise ProblemError(409, ErrorCode.CONFLICT, f"federation {fid} is {row.status}; cannot become {to}")
        session.flush()
        session.refresh(row)
        return service.to_schema(session, row)


_TRANSITION_DOC = problems(401, 403, 404, 409)


@router.post("/{fid}/pause", response_model=Federation, summary="Pause a federation",
             description="Stops opening new rounds. A round already open still collects updates and closes.",
             responses={200: example(FEDERATION_EXAMPLE), **_TRANSITION_DOC})
def pause(fid: str, _: Principal = Depends(require_admin), services: Services = Depends(get_services)) -> Federation:
    return _change(services, fid, FederationStatus.PAUSED, (FederationStatus.WAITING, FederationStatus.RUNNING))


@router.post("/{fid}/resume", response_model=Federation, summary="Resume a paused federation",
             description="Back to `running` (or `waiting` if no round was ever opened).",
             responses={200: example(FEDERATION_EXAMPLE), **_TRANSITION_DOC})
def resume(fid: str, _: Principal = Depends(require_admin), services: Services = Depends(get_services)) -> Federation:
    with services.db.read() as session:
        service.get_row(session, fid)
        started = session.scalar(select(RoundRow.number).where(RoundRow.federation_id == fid).limit(1)) is not None
    to = FederationStatus.RUNNING if started else FederationStatus.WAITING
    return _change(services, fid, to, (FederationStatus.PAUSED,))


@router.post("/{fid}/cancel", response_model=Federation, summary="Cancel a federation",
             description="Ends it for good: the open round fails, clients are told `done`.",
             responses={200: example(FEDERATION_EXAMPLE), **_TRANSITION_DOC})
def cancel(fid: str, _: Principal = Depends(require_admin), services: Services = Depends(get_services)) -> Federation:
    return _change(services, fid, FederationStatus.CANCELLED, service.ACTIVE)
