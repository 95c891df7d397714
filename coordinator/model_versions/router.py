"""/v1/federations/{fid}/models and /prototypes: immutable, content-addressed, ETag = sha256."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from coordinator.auth import Principal, require_admin, require_reader
from coordinator.bodies import blob_response, etag_of, read_capped_body, require_tensor_media_type
from coordinator.core import Services, get_services
from coordinator.idempotency import Created, IdempotencyKey, idempotent
from coordinator.limits import MODEL_UPLOAD_SLOT
from coordinator.model_versions import service
from coordinator.openapi import (
    MODEL_VERSION_EXAMPLE,
    PROTOTYPE_SET_EXAMPLE,
    SAFETENSORS_BODY,
    example,
    problems,
    safetensors_response,
)
from mfcpl.wire.constants import SHARED_LEVEL
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import ModelVersion, PrototypeSet

router = APIRouter(prefix="/federations/{fid}", tags=["models"])


@router.post(
    "/models", status_code=201, response_model=ModelVersion, summary="Upload the initial model (version 0)",
    description="The operator uploads the initial weights as a safetensors body (`mfcpl.model.v1`: one tensor per "
    "parameter). Only version 0 can be uploaded; later versions are produced by rounds. Repeating the identical "
    "upload answers 200. With `Idempotency-Key`, a retry answers the first response again (409 "
    "`idempotency_conflict` for a different body). At most `max_admin_uploads` uploads run at once (429 "
    "`too_many_requests` past it).",
    openapi_extra=SAFETENSORS_BODY,
    responses={201: example(MODEL_VERSION_EXAMPLE | {"version": 0, "round": None}),
               200: example(MODEL_VERSION_EXAMPLE | {"version": 0, "round": None}, "The identical version 0 again."),
               **problems(
        401, 403, 404, (ErrorCode.CONFLICT, "model version 0 already exists; later versions come from rounds"),
        ErrorCode.FEDERATION_NOT_RUNNING, ErrorCode.IDEMPOTENCY_CONFLICT, 413, 415, ErrorCode.MALFORMED_TENSORS,
        ErrorCode.NON_FINITE, 429)},
)
async def upload_model(fid: str, request: Request, idempotency_key: IdempotencyKey = None,
                       _: Principal = Depends(require_admin),
                       services: Services = Depends(get_services), _slot: None = MODEL_UPLOAD_SLOT) -> JSONResponse:
    require_tensor_media_type(request)
    body = await read_capped_body(request, services.settings.max_update_bytes)

    def create() -> Created:
        model, created = service.store_initial(services, fid, body)
        return Created(201 if created else 200, model, headers={"ETag": etag_of(model.sha256)})

    return await run_in_threadpool(idempotent, services, request, idempotency_key, body, create)


@router.get("/models", response_model=list[ModelVersion], summary="List model versions",
            responses={200: example([MODEL_VERSION_EXAMPLE]), **problems(401, 403, 404)})
def list_models(fid: str, _: Principal = Depends(require_reader),
                services: Services = Depends(get_services)) -> list[ModelVersion]:
    return service.list_models(services, fid)


@router.get("/models/{v}", response_model=ModelVersion, summary="Get a model version",
            description="`v` is a version number or `latest`.",
            responses={200: example(MODEL_VERSION_EXAMPLE), **problems(401, 403, 404)})
def get_model(fid: str, v: str, _: Principal = Depends(require_reader),
              services: Services = Depends(get_services)) -> ModelVersion:
    return service.get_model(services, fid, v)


@router.get("/models/{v}/weights", summary="Download model weights (safetensors)",
            description="The weights as `application/vnd.safetensors`. The ETag is the quoted sha256; send it in "
            "If-None-Match to get 304 when unchanged. `latest` resolves to the newest version.",
            response_class=Response, responses={**safetensors_response("Model weights."), **problems(401, 403, 404)})
def get_weights(fid: str, v: str, request: Request, _: Principal = Depends(require_reader),
                services: Services = Depends(get_services)) -> Response:
    data, sha256 = service.model_weights(services, fid, v)
    return blob_response(request, data, sha256)


@router.get("/prototypes/{v}", response_model=PrototypeSet, summary="Complete prototypes (summary)",
            description=f"Per level (`{SHARED_LEVEL}` and each modality) the prototype dimension, the coverage mask "
            "over classes and the sample counts behind each prototype. `v` is the model version they belong to, or "
            "`latest`.", responses={200: example(PROTOTYPE_SET_EXAMPLE), **problems(401, 403, 404)})
def get_prototypes(fid: str, v: str, _: Principal = Depends(require_reader),
                   services: Services = Depends(get_services)) -> PrototypeSet:
    return service.get_prototypes(services, fid, v)


@router.get("/prototypes/{v}/tensors", summary="Download complete prototypes (safetensors)",
            description="`mfcpl.prototypes.v1`: `prototypes/<level>` float32 [C, d] and `prototype_counts/<level>` "
            "float32 [C] (0 = no prototype). ETag and If-None-Match as for weights.",
            response_class=Response,
            responses={**safetensors_response("Complete prototypes."), **problems(401, 403, 404)})
def get_prototype_tensors(fid: str, v: str, request: Request, _: Principal = Depends(require_reader),
                          services: Services = Depends(get_services)) -> Response:
    data, sha256 = service.prototype_tensors(services, fid, v)
    return blob_response(request, data, sha256)
