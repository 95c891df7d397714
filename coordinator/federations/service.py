"""Federation records and their guarded status transitions."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from coordinator.core import Services
from coordinator.events.service import emit
from coordinator.federations.orm import FederationRow
from coordinator.models.orm import ModelVersionRow
from coordinator.problems import ProblemError
from coordinator.rounds.orm import RoundRow
from coordinator.timeutil import new_id, utcnow
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import EventType, Federation, FederationCreate, FederationStatus

ACTIVE = (FederationStatus.WAITING, FederationStatus.RUNNING, FederationStatus.PAUSED)
TERMINAL = (FederationStatus.COMPLETED, FederationStatus.CANCELLED)


def get_row(session: Session, fid: str) -> FederationRow:
    row = session.get(FederationRow, fid)
    if row is None:
        raise ProblemError(404, ErrorCode.NOT_FOUND, f"federation {fid} does not exist")
    return row


def config_of(services: Services, session: Session, fid: str) -> FederationCreate:
    """The federation's configuration (immutable, so cached per process)."""
    cached = services.cached(("config", fid))
    if cached is not None:
        return cached
    row = get_row(session, fid)
    return services.remember(("config", fid), FederationCreate.model_validate(row.config))


def to_schema(session: Session, row: FederationRow) -> Federation:
    current = session.scalar(select(func.max(RoundRow.number)).where(RoundRow.federation_id == row.id))
    latest = session.scalar(select(func.max(ModelVersionRow.version)).where(ModelVersionRow.federation_id == row.id))
    config = FederationCreate.model_validate(row.config)
    return Federation(id=row.id, status=FederationStatus(row.status), config=config,
                      current_round=current, latest_model_version=latest, created_at=row.created_at,
                      updated_at=row.updated_at)


def create(session: Session, config: FederationCreate) -> FederationRow:
    now = utcnow()
    row = FederationRow(id=new_id("fed"), name=config.name, status=FederationStatus.WAITING,
                        config=config.model_dump(mode="json"), seed=config.seed, event_seq=0, created_at=now,
                        updated_at=now)
    session.add(row)
    session.flush()
    emit(session, row.id, EventType.FEDERATION_STATUS, None, {"status": FederationStatus.WAITING})
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
    if result.rowcount != 1:
        return False
    data = {"status": str(to)}
    if reason:
        data["reason"] = reason
    emit(session, fid, EventType.FEDERATION_STATUS, None, data)
    return True
