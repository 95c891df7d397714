"""/v1/federations/{fid}/metrics and evaluations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse

from coordinator.auth import Principal, require_admin, require_reader
from coordinator.core import Services, get_services
from coordinator.idempotency import Created, IdempotencyKey, idempotent
from coordinator.metrics import service
from coordinator.openapi import TIME, example, problems
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import Evaluation, EvaluationCreate, RoundMetrics

router = APIRouter(prefix="/federations/{fid}", tags=["metrics"])

EVALUATION_EXAMPLE = {"split": "dev", "metrics": {"macro_f1": 0.71, "accuracy": 0.78}, "model_version": 3}


@router.post("/rounds/{r}/evaluations", status_code=201, response_model=Evaluation, summary="Record an evaluation",
             description="Metrics of a model version on a split (e.g. `dev`, `test`), attached to a round. A later "
             "evaluation of the same split and round replaces the earlier one in /metrics. With `Idempotency-Key`, "
             "a retry records nothing new and answers the first response (409 `idempotency_conflict` for a "
             "different body).",
             responses={201: example({"federation_id": "fed_3f2a9c1d4b5e6f70", "round": 3, "created_at": TIME,
                                      **EVALUATION_EXAMPLE}),
                        **problems(401, 403, 404, ErrorCode.IDEMPOTENCY_CONFLICT, 413, 422, ErrorCode.NON_FINITE)})
def post_evaluation(
    fid: str, r: int, body: Annotated[EvaluationCreate, Body(openapi_examples={"dev": {"value": EVALUATION_EXAMPLE}})],
    request: Request, idempotency_key: IdempotencyKey = None,
    _: Principal = Depends(require_admin), services: Services = Depends(get_services),
) -> JSONResponse:
    return idempotent(services, request, idempotency_key, body,
                      lambda: Created(201, service.record_evaluation(services, fid, r, body)))


@router.get("/metrics", response_model=list[RoundMetrics], summary="Per-round metrics",
            description="One entry per round: state, participants, updates received, the sample-weighted mean of "
            "client-reported training metrics, evaluations by split, and aggregation time.",
            responses={200: example([{"round": 3, "state": "closed", "participants": 10, "received": 10,
                                      "train": {"loss": 0.41}, "evaluations": {"dev": {"macro_f1": 0.71}},
                                      "opened_at": TIME, "closed_at": TIME, "aggregation_s": 0.12}]),
                       **problems(401, 403, 404)})
def get_metrics(fid: str, _: Principal = Depends(require_reader),
                services: Services = Depends(get_services)) -> list[RoundMetrics]:
    return service.round_metrics(services, fid)
