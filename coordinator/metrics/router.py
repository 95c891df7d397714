"""/v1/federations/{fid}/metrics and evaluations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends
from sqlalchemy import select

from coordinator.auth import Principal, require_admin, require_reader
from coordinator.core import Services, get_services
from coordinator.federations import service as federations
from coordinator.metrics.orm import EvaluationRow
from coordinator.openapi import TIME, example, problems
from coordinator.problems import ProblemError
from coordinator.rounds.orm import RoundRow
from coordinator.timeutil import utcnow
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import Evaluation, EvaluationCreate, RoundMetrics, RoundState

router = APIRouter(prefix="/federations/{fid}", tags=["metrics"])

EVALUATION_EXAMPLE = {"split": "dev", "metrics": {"macro_f1": 0.71, "accuracy": 0.78}, "model_version": 3}


@router.post("/rounds/{r}/evaluations", status_code=201, response_model=Evaluation, summary="Record an evaluation",
             description="Metrics of a model version on a split (e.g. `dev`, `test`), attached to a round. A later "
             "evaluation of the same split and round replaces the earlier one in /metrics.",
             responses={201: example({"federation_id": "fed_3f2a9c1d4b5e6f70", "round": 3, "created_at": TIME,
                                      **EVALUATION_EXAMPLE}), **problems(401, 403, 404, 422)})
def post_evaluation(
    fid: str, r: int, body: Annotated[EvaluationCreate, Body(openapi_examples={"dev": {"value": EVALUATION_EXAMPLE}})],
    _: Principal = Depends(require_admin), services: Services = Depends(get_services),
) -> Evaluation:
    if not all(v == v and abs(v) != float("inf") for v in body.metrics.values()):
        raise ProblemError(422, ErrorCode.NON_FINITE, "metrics hold NaN or Inf")
    with services.db.write() as session:
        federations.get_row(session, fid)
        row = session.get(RoundRow, (fid, r))
        if row is None:
            raise ProblemError(404, ErrorCode.NOT_FOUND, f"federation {fid} has no round {r}")
        version = body.model_version if body.model_version is not None else row.output_model_version
        evaluation = EvaluationRow(federation_id=fid, round=r, split=body.split, metrics=dict(body.metrics),
                                   model_version=version, created_at=utcnow())
        session.add(evaluation)
        session.flush()
    return Evaluation(federation_id=fid, round=r, split=body.split, metrics=body.metrics, model_version=version,
                      created_at=evaluation.created_at)


@router.get("/metrics", response_model=list[RoundMetrics], summary="Per-round metrics",
            description="One entry per round: state, participants, updates received, the sample-weighted mean of "
            "client-reported training metrics, evaluations by split, and aggregation time.",
            responses={200: example([{"round": 3, "state": "closed", "participants": 10, "received": 10,
                                      "train": {"loss": 0.41}, "evaluations": {"dev": {"macro_f1": 0.71}},
                                      "opened_at": TIME, "closed_at": TIME, "aggregation_s": 0.12}]),
                       **problems(401, 403, 404)})
def get_metrics(fid: str, _: Principal = Depends(require_reader),
                services: Services = Depends(get_services)) -> list[RoundMetrics]:
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
