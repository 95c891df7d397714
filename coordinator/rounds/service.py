"""Round records for the API: the schema of a round, and the reads behind ``/rounds``.

The lifecycle lives next to this module by role: :mod:`coordinator.rounds.opening` (open a round, sample its
participants), :mod:`coordinator.rounds.closing` (claim, aggregate, close or fail) and
:mod:`coordinator.rounds.timer` (the tick that drives both).
"""

from __future__ import annotations

from sqlalchemy import select

from coordinator.core import Services
from coordinator.federations import service as federations
from coordinator.problems import ProblemError
from coordinator.rounds.orm import RoundRow
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import Round as RoundSchema
from mfcpl.wire.schemas import RoundState

ACTIVE_ROUND_STATES = (RoundState.OPEN, RoundState.CLOSING)


def round_schema(row: RoundRow) -> RoundSchema:
    return RoundSchema(federation_id=row.federation_id, number=row.number, state=RoundState(row.state),
                       seed=row.seed, participants=list(row.participants), received=row.received, quorum=row.quorum,
                       input_model_version=row.input_model_version, output_model_version=row.output_model_version,
                       prototype_version=row.prototype_version, deadline=row.deadline, opened_at=row.opened_at,
                       closed_at=row.closed_at, failure_reason=row.failure_reason, train_metrics=row.train_metrics)


def list_rounds(services: Services, fid: str) -> list[RoundSchema]:
    with services.db.read() as session:
        federations.get_row(session, fid)
        rows = session.scalars(select(RoundRow).where(RoundRow.federation_id == fid).order_by(RoundRow.number))
        return [round_schema(r) for r in rows]


def get_round(services: Services, fid: str, number: int) -> RoundSchema:
    with services.db.read() as session:
        federations.get_row(session, fid)
        row = session.get(RoundRow, (fid, number))
        if row is None:
            raise ProblemError(ErrorCode.NOT_FOUND, f"federation {fid} has no round {number}")
        return round_schema(row)
