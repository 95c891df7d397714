"""Recording events: one sequence per federation, taken under the federation row's lock so events commit in
sequence order and a reader following ``seq`` never skips one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from coordinator.core import Services
from coordinator.events.orm import EventRow
from coordinator.federations import service as federations
from coordinator.federations.orm import FederationRow
from coordinator.timeutil import utcnow
from mfcpl.wire.schemas import Event, EventType


def emit(session: Session, federation_id: str, type_: EventType, round_: int | None = None,
         data: dict[str, Any] | None = None) -> int:
    seq = session.execute(
        update(FederationRow)
        .where(FederationRow.id == federation_id)
        .values(event_seq=FederationRow.event_seq + 1)
        .returning(FederationRow.event_seq)
    ).scalar_one()
    session.add(EventRow(federation_id=federation_id, seq=seq, type=str(type_), round=round_, data=data or {},
                         created_at=utcnow()))
    return int(seq)


def events_after(session: Session, federation_id: str, after: int, limit: int = 500) -> list[Event]:
    rows = session.scalars(
        select(EventRow)
        .where(EventRow.federation_id == federation_id, EventRow.seq > after)
        .order_by(EventRow.seq)
        .limit(limit)
    ).all()
    return [Event(id=r.seq, federation_id=r.federation_id, type=EventType(r.type), round=r.round, data=r.data,
                  created_at=r.created_at) for r in rows]


def poll(services: Services, fid: str, after: int) -> tuple[list[Event], bool]:
    """The events after ``after`` (at most one page), and whether the federation has ended (404 if unknown)."""
    with services.db.read() as session:
        events = events_after(session, fid, after)
        terminal = federations.get_row(session, fid).status in federations.TERMINAL
    return events, terminal
