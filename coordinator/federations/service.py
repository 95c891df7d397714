"""Federation records and their guarded status transitions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session

from coordinator.core import Services
from coordinator.events import service as events
from coordinator.federations.orm import FederationRow
from coordinator.federations.readiness import describe
from coordinator.model_versions.orm import ModelVersionRow
from coordinator.problems import ProblemError
from coordinator.rounds.orm import RoundRow
from coordinator.timeutil import new_id, utcnow
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import EventType, Federation, FederationCreate, FederationStatus, RoundState

ACTIVE = (FederationStatus.WAITING, FederationStatus.RUNNING, FederationStatus.PAUSED)
TERMINAL = (FederationStatus.COMPLETED, FederationStatus.CANCELLED)


def get_row(session: Session, fid: str) -> FederationRow:
    row = session.get(FederationRow, fid)
    if row is None:
        raise ProblemError(ErrorCode.NOT_FOUND, f"federation {fid} does not exist")
    return row


def config_of(services: Services, session: Session, fid: str) -> FederationCreate:
    """The federation's configuration (immutable, so cached per process)."""
    cached = services.facts.config(fid)
    if cached is not None:
        return cached
    row = get_row(session, fid)
    return services.facts.remember_config(fid, FederationCreate.model_validate(row.config))


def to_schema(services: Services, session: Session, row: FederationRow) -> Federation:
    current = session.scalar(select(func.max(RoundRow.number)).where(RoundRow.federation_id == row.id))
    latest = session.scalar(select(func.max(ModelVersionRow.version)).where(ModelVersionRow.federation_id == row.id))
    config = FederationCreate.model_validate(row.config)
    status = FederationStatus(row.status)
    reason = describe(session, row.id, status, config, utcnow(), services.settings.max_close_attempts)
    return Federation(id=row.id, status=status, status_reason=reason, config=config,
                      current_round=current, latest_model_version=latest, created_at=row.created_at,
                      updated_at=row.updated_at)


def create(session: Session, config: FederationCreate) -> FederationRow:
    now = utcnow()
    row = FederationRow(id=new_id("fed"), name=config.name, status=FederationStatus.WAITING,
                        config=config.model_dump(mode="json"), seed=config.seed, event_seq=0, created_at=now,
                        updated_at=now)
    session.add(row)
    session.flush()
    events.emit(session, row.id, EventType.FEDERATION_STATUS, None, {"status": FederationStatus.WAITING})
    return row


def list_rows(session: Session) -> list[FederationRow]:
    return list(session.scalars(select(FederationRow).order_by(FederationRow.created_at, FederationRow.id)))


def transition(session: Session, fid: str, to: FederationStatus, allowed_from: Iterable[FederationStatus],
               reason: str | None = None) -> bool:
    """Guarded status change: true only for the one caller whose UPDATE matched."""
    result = session.execute(
        update(FederationRow)
        .where(FederationRow.id == fid, FederationRow.status.in_([str(s) for s in allowed_from]))
        .values(status=str(to), updated_at=utcnow())
    )
    if cast(CursorResult[Any], result).rowcount != 1:
        return False
    data = {"status": str(to)}
    if reason:
        data["reason"] = reason
    events.emit(session, fid, EventType.FEDERATION_STATUS, None, data)
    return True


# ---------------------------------------------------------------------------------------------- API


def create_federation(services: Services, config: FederationCreate) -> Federation:
    with services.db.write() as session:
        row = create(session, config)
        return to_schema(services, session, row)


def list_federations(services: Services) -> list[Federation]:
    with services.db.read() as session:
        return [to_schema(services, session, row) for row in list_rows(session)]


def get_federation(services: Services, fid: str) -> Federation:
    with services.db.read() as session:
        return to_schema(services, session, get_row(session, fid))


def change_status(services: Services, fid: str, to: FederationStatus,
                  allowed: tuple[FederationStatus, ...]) -> Federation:
    """An operator's status change (409 when the federation's status does not allow it)."""
    with services.db.write() as session:
        row = get_row(session, fid)
        if to == FederationStatus.CANCELLED and row.status in allowed:
            # Lock order everywhere: rounds before the federation row. An open round and a closing one alike
            # (whatever its closer is doing: its final guarded UPDATE then matches nothing and commits nothing).
            failed = session.execute(
                update(RoundRow).where(RoundRow.federation_id == fid,
                                       RoundRow.state.in_([str(RoundState.OPEN), str(RoundState.CLOSING)]))
                .values(state=RoundState.FAILED, failure_reason="federation cancelled", closed_at=utcnow())
                .returning(RoundRow.number)
            ).scalars().all()
            for number in failed:
                events.emit(session, fid, EventType.ROUND_FAILED, number, {"reason": "federation cancelled"})
        if not transition(session, fid, to, allowed):
            raise ProblemError(ErrorCode.CONFLICT, f"federation {fid} is {row.status}; cannot become {to}")
        session.flush()
        session.refresh(row)
        return to_schema(services, session, row)


def pause(services: Services, fid: str) -> Federation:
    return change_status(services, fid, FederationStatus.PAUSED, (FederationStatus.WAITING, FederationStatus.RUNNING))


def resume(services: Services, fid: str) -> Federation:
    """Back to ``running``, or ``waiting`` if no round was ever opened."""
    with services.db.read() as session:
        get_row(session, fid)
        started = session.scalar(select(RoundRow.number).where(RoundRow.federation_id == fid).limit(1)) is not None
    to = FederationStatus.RUNNING if started else FederationStatus.WAITING
    return change_status(services, fid, to, (FederationStatus.PAUSED,))


def cancel(services: Services, fid: str) -> Federation:
    return change_status(services, fid, FederationStatus.CANCELLED, ACTIVE)
