"""Evaluations of model versions, and the per-round metrics table."""

from __future__ import annotations

from sqlalchemy import select

from coordinator.core import Services
from coordinator.federations import service as federations
from coordinator.metrics.orm import EvaluationRow
from coordinator.problems import ProblemError
from coordinator.rounds.orm import RoundRow
from coordinator.timeutil import utcnow
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import Evaluation, EvaluationCreate, RoundMetrics, RoundState


def record_evaluation(services: Services, fid: str, r: int, body: EvaluationCreate) -> Evaluation:
    """Store an evaluation of round ``r`` (of its output model unless ``model_version`` says otherwise)."""
    if not all(v == v and abs(v) != float("inf") for v in body.metrics.values()):
        raise ProblemError(ErrorCode.NON_FINITE, "metrics hold NaN or Inf")
    with services.db.write() as session:
        federations.get_row(session, fid)
        row = session.get(RoundRow, (fid, r))
        if row is None:
            raise ProblemError(ErrorCode.NOT_FOUND, f"federation {fid} has no round {r}")
        version = body.model_version if body.model_version is not None else row.output_model_version
        evaluation = EvaluationRow(federation_id=fid, round=r, split=body.split, metrics=dict(body.metrics),
                                   model_version=version, created_at=utcnow())
        session.add(evaluation)
        session.flush()
    return Evaluation(federation_id=fid, round=r, split=body.split, metrics=body.metrics, model_version=version,
                      created_at=evaluation.created_at)


def round_metrics(services: Services, fid: str) -> list[RoundMetrics]:
    """One entry per round; the latest evaluation of each split wins."""
    with services.db.read() as session:
        federations.get_row(session, fid)
        rounds = session.scalars(select(RoundRow).where(RoundRow.federation_id == fid).order_by(RoundRow.number))
        evaluations: dict[int, dict[str, dict[str, float]]] = {}
        for ev in session.scalars(select(EvaluationRow).where(EvaluationRow.federation_id == fid)
                                  .order_by(EvaluationRow.id)):
            evaluations.setdefault(ev.round, {})[ev.split] = ev.metrics
        return [RoundMetrics(round=r.number, state=RoundState(r.state), participants=len(r.participants),
                             received=r.received, train=r.train_metrics, evaluations=evaluations.get(r.number, {}),
                             opened_at=r.opened_at, closed_at=r.closed_at, aggregation_s=r.aggregation_s)
                for r in rounds]
