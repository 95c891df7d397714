"""/v1/federations/{fid}/models and /prototypes: immutable, content-addressed, ETag = sha256."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from coordinator.auth import Principal, require_admin, require_reader
from coordinator.blobs import sha256_hex
from coordinator.bodies import blob_response, etag_of, read_capped_body, require_tensor_media_type
from coordinator.core import Services, get_services
from coordinator.federations import service as federations
from coordinator.models import service
from coordinator.models.orm import ModelVersionRow
from coordinator.openapi import (
    MODEL_VERSION_EXAMPLE,
    PROTOTYPE_SET_EXAMPLE,
    SAFETENSORS_BODY,
    example,
    problems,
    safetensors_response,
)
from coordinator.problems import ProblemError
from coordinator.timeutil import utcnow
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import ModelVersion, PrototypeSet

router = APIRouter(prefix="/federations/{fid}", tags=["models"])


def _store_initial(services: Services, fid: str, body: bytearray) -> tuple[ModelVersion, bool]:
    header = service.validate_model_body(body)
    sha256 = sha256_hex(body)
    with services.db.read() as session:
        fed = federations.get_row(session, fid)
        if fed.status in federations.TERMINAL:
            raise ProblemError(409, ErrorCode.FEDERATION_NOT_RUNNING, f"federation {fid} is {fed.status}")
        existing = session.get(ModelVersionRow, (fid, 0))
    if existing is not None:
        if existing.sha256 == sha256:
            return service.model_schema(existing), False
        raise ProblemError(409, ErrorCode.CONFLICT, "model version 0 already exists; later versions come from rounds")
    services.blobs.put(body, sha256)
    row = ModelVersionRow(federation_id=fid, version=0, sha256=sha256, size_bytes=len(body), round=None,
                          tensor_specs=service.tensor_specs(header), momentum_sha256=None, created_at=utcnow())
    try:
        with services.db.write() as session:
            session.add(row)
    except IntegrityError as exc:
        raise ProblemError(409, ErrorCode.CONFLICT, "model version 0 was uploaded concurrently") from exc
    return service.model_schema(row), True


@router.post(
    "/models", status_code=201, response_model=ModelVersion, summary="Upload the initial model (version 0)",
    description="The operator uploads the initial weights as a safetensors body (`mfcpl.model.v1`: one tensor per "
    "parameter). Only version 0 can be uploaded; later versions are produced by rounds. Repeating the identical "
    "upload answers 200.",
    openapi_extra=SAFETENSORS_BODY,
    responses={201: example(MODEL_VERSION_EXAMPLE | {"version": 0, "round": None}), **problems(401, 403, 404, 409,
                                                                                                  413, 415, 422)},
)
async def upload_model(fid: str, request: Request, _: Principal = Depends(require_admin),
                       services: Services = Depends(get_services)) -> JSONResponse:
    require_tensor_media_type(request)
    body = await read_capped_body(request, services.settings.max_update_bytes)
    model, created = await run_in_threadpool(_store_initial, services, fid, body)
    return JSONResponse(model.model_dump(mode="json"), status_code=201 if created else 200,
                        headers={"ETag": etag_of(model.sha256)})


@router.get("/models", response_model=list[ModelVersion], summary="List model versions",
            responses={200: example([MODEL_VERSION_EXAMPLE]), **problems(401, 403, 404)})
def list_models(fid: str, _: Principal = Depends(require_reader),
                services: Services = Depends(get_services)) -> list[ModelVersion]:
    with services.db.read() as session:
        federations.get_row(session, fid)
        rows = session.scalars(select(ModelVersionRow).where(ModelVersionRow.federation_id == fid)
                               .order_by(ModelVersionRow.version))
        return [service.model_schema(r) for r in rows]


@router.get("/models/{v}", response_model=ModelVersion, summary="Get a model version",
            description="`v` is a version number or `latest`.",
            responses={200: example(MODEL_VERSION_EXAMPLE), **problems(401, 403, 404)})
def get_model(fid: str, v: str, _: Principal = Depends(require_reader),
              services: Services = Depends(get_services)) -> ModelVersion:
    with services.db.read() as session:
        federations.get_row(session, fid)
        return service.model_schema(service.get_model_row(session, fid, service.parse_version(v)))


@router.get("/models/{v}/weights", summary="Download model weights (safetensors)",
            description="The weights as `application/vnd.safetensors`. The ETag is the quoted sha256; send it in "
            "If-None-Match to get 304 when unchanged. `latest` resolves to the newest version.",
            response_class=Response, responses={**safetensors_response("Model weights."), **problems(401, 403, 404)})
def get_weights(fid: str, v: str, request: Request, _: Principal = Depends(require_reader),
                services: Services = Depends(get_services)) -> Response:
    with services.db.read() as session:
        federations.get_row(session, fid)
        row = service.get_model_row(session, fid, service.parse_version(v))
    return blob_response(request, services.blobs.get(row.sha256), row.sha256)


@router.get("/prototypes/{v}", response_model=PrototypeSet, summary="Complete prototypes (summary)",
            description="Per level (`shared` and each modality) the prototype dimension, the coverage mask over "
            "classes and the sample counts behind each prototype. `v` is the model version they belong to, or "
            "`latest`.", responses={200: example(PROTOTYPE_SET_EXAMPLE), **problems(401, 403, 404)})
def get_prototypes(fid: str, v: str, _: Principal = Depends(require_reader),
                   services: Services = Depends(get_services)) -> PrototypeSet:
    with services.db.read() as session:
        federations.get_row(session, fid)
        return service.prototype_schema(service.get_prototype_row(session, fid, service.parse_version(v)))


@router.get("/prototypes/{v}/tensors", summary="Download complete prototypes (safetensors)",
            description="`mfcpl.prototypes.v1`: `prototypes/<level>` float32 [C, d] and `prototype_counts/<level>` "
            "float32 [C] (0 = no prototype). ETag and If-None-Match as for weights.",
            response_class=Response,
            responses={**safetensors_response("Complete prototypes."), **problems(401, 403, 404)})
def get_prototype_tensors(fid: str, v: str, request: Request, _: Principal = Depends(require_reader),
                          services: Services = Depends(get_services)) -> Response:
    with services.db.read() as session:
        federations.get_row(session, fid)
        row = service.get_prototype_row(session, fid, service.parse_version(v))
    return blob_response(request, services.blobs.get(row.sha256), row.sha256)
