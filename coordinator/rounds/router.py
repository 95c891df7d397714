"""/v1/federations/{fid}/tasks/next and /rounds."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from coordinator.auth import Principal, require_client, require_reader
from coordinator.core import Services, get_services
from coordinator.openapi import ROUND_EXAMPLE, TASK_TRAIN_EXAMPLE, example, problems
from coordinator.rounds import service
from coordinator.rounds.tasks import next_task
from mfcpl.wire.schemas import Round, Task

tasks_router = APIRouter(prefix="/federations/{fid}", tags=["tasks"])
router = APIRouter(prefix="/federations/{fid}/rounds", tags=["rounds"])


@tasks_router.get(
    "/tasks/next", response_model=Task, summary="What should this client do now",
    description="Pull-based scheduling for clients behind NAT. `train`: train round r from model version v (and the "
    "complete prototypes, if any) with this config and seed, and post the update before the deadline. `wait`: ask "
    "again after `retry_after_s`. `done`: the federation finished or was cancelled. Every call renews the client's "
    "lease; a client whose lease lapses is not sampled.",
    responses={200: example(TASK_TRAIN_EXAMPLE), **problems(401, 403, 404)},
)
def get_next_task(fid: str, principal: Principal = Depends(require_client),
                  services: Services = Depends(get_services)) -> Task:
    assert principal.client_id is not None
    return next_task(services, fid, principal.client_id)


@router.get("", response_model=list[Round], summary="List rounds",
            description="Every round in order, with its state, sampled participants, seed, received count, input "
            "and output model versions and the sample-weighted mean of the metrics clients reported.",
            responses={200: example([ROUND_EXAMPLE]), **problems(401, 403, 404)})
def list_rounds(fid: str, _: Principal = Depends(require_reader),
                services: Services = Depends(get_services)) -> list[Round]:
    return service.list_rounds(services, fid)


@router.get("/{r}", response_model=Round, summary="Get a round",
            responses={200: example(ROUND_EXAMPLE), **problems(401, 403, 404)})
def get_round(fid: str, r: int, _: Principal = Depends(require_reader),
              services: Services = Depends(get_services)) -> Round:
    return service.get_round(services, fid, r)
