"""Model versions and prototype sets: creation, lookup, summaries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coordinator.blobs import Buffer, sha256_hex
from coordinator.core import Services
from coordinator.facts import TensorSpecs
from coordinator.federations import service as federations
from coordinator.model_versions.orm import ModelVersionRow, PrototypeSetRow
from coordinator.numbers import NumberTextError, parse_ascii_int
from coordinator.problems import ProblemError
from coordinator.timeutil import utcnow
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import ModelVersion, PrototypeLevel, PrototypeSet
from mfcpl.wire.tensors import MODEL_FORMAT, Header, PrototypeTable, TensorFormatError, read_header, tensor_view

FLOAT_CODES = ("F16", "F32", "F64")
FINITE_CHUNK = 1 << 20


def tensor_specs(header: Header, prefix: str = "") -> dict[str, list[Any]]:
    return {name[len(prefix):]: [info.dtype, list(info.shape)] for name, info in header.tensors.items()
            if name.startswith(prefix)}


def first_non_finite(buf: Any, header: Header, names: list[str] | None = None) -> str | None:
    """Name of the first float tensor holding NaN or Inf (checked in chunks, O(chunk) extra memory)."""
    for name in names if names is not None else list(header.tensors):
        info = header.tensors[name]
        if info.dtype not in FLOAT_CODES:
            continue
        flat = tensor_view(buf, info).reshape(-1)
        for start in range(0, flat.size, FINITE_CHUNK):
            if not np.isfinite(flat[start:start + FINITE_CHUNK]).all():
                return name
    return None


def validate_model_body(body: Any) -> Header:
    """A model upload: readable safetensors, at least one tensor, finite, format metadata if present."""
    try:
        header = read_header(body)
    except TensorFormatError as exc:
        raise ProblemError.from_tensor_error(exc) from exc
    fmt = header.metadata.get("format")
    if fmt is not None and fmt != MODEL_FORMAT:
        raise ProblemError(ErrorCode.MALFORMED_TENSORS, f"metadata.format is {fmt!r}, expected {MODEL_FORMAT!r}")
    if not header.tensors:
        raise ProblemError(ErrorCode.MALFORMED_TENSORS, "a model needs at least one tensor")
    bad = first_non_finite(body, header)
    if bad is not None:
        raise ProblemError(ErrorCode.NON_FINITE, f"tensor {bad!r} holds NaN or Inf")
    return header


def model_schema(row: ModelVersionRow) -> ModelVersion:
    return ModelVersion(federation_id=row.federation_id, version=row.version, sha256=row.sha256,
                        size_bytes=row.size_bytes, round=row.round, created_at=row.created_at)


def prototype_schema(row: PrototypeSetRow) -> PrototypeSet:
    return PrototypeSet(federation_id=row.federation_id, version=row.version, sha256=row.sha256,
                        levels=[PrototypeLevel.model_validate(level) for level in row.levels],
                        created_at=row.created_at)


def prototype_levels_summary(tables: Mapping[str, PrototypeTable]) -> list[dict[str, Any]]:
    return [
        PrototypeLevel(name=level, dim=int(t.vectors.shape[1]), coverage=[bool(c) for c in t.coverage],
                       counts=[float(c) for c in t.counts]).model_dump()
        for level, t in sorted(tables.items())
    ]


def parse_version(v: str) -> int | None:
    """``latest`` -> None, else a non-negative integer of ASCII digits (404 otherwise; 422 past the database's
    range)."""
    if v == "latest":
        return None
    try:
        return parse_ascii_int(v)
    except NumberTextError as exc:
        if exc.out_of_range:
            raise ProblemError(ErrorCode.VALIDATION_ERROR, f"model version {exc}") from None
        raise ProblemError(ErrorCode.NOT_FOUND, f"model version must be an integer or 'latest', got {v[:40]!r}") \
            from None


def get_model_row(session: Session, fid: str, version: int | None) -> ModelVersionRow:
    if version is None:
        version = session.scalar(select(func.max(ModelVersionRow.version)).where(ModelVersionRow.federation_id == fid))
        if version is None:
            raise ProblemError(ErrorCode.NOT_FOUND, f"federation {fid} has no model version yet")
    row = session.get(ModelVersionRow, (fid, version))
    if row is None:
        raise ProblemError(ErrorCode.NOT_FOUND, f"federation {fid} has no model version {version}")
    return row


def latest_prototype_row(session: Session, fid: str, at_most: int | None = None) -> PrototypeSetRow | None:
    query = select(PrototypeSetRow).where(PrototypeSetRow.federation_id == fid)
    if at_most is not None:
        query = query.where(PrototypeSetRow.version <= at_most)
    return session.scalars(query.order_by(PrototypeSetRow.version.desc()).limit(1)).first()


def get_prototype_row(session: Session, fid: str, version: int | None) -> PrototypeSetRow:
    row = latest_prototype_row(session, fid) if version is None else session.get(PrototypeSetRow, (fid, version))
    if row is None:
        which = "any complete prototypes" if version is None else f"prototypes for model version {version}"
        raise ProblemError(ErrorCode.NOT_FOUND, f"federation {fid} has no {which}")
    return row


def model_specs(services: Services, session: Session, fid: str, version: int) -> TensorSpecs:
    """Tensor specs of a model version (immutable, cached per process)."""
    cached = services.facts.model_specs(fid, version)
    if cached is not None:
        return cached
    return services.facts.remember_model_specs(fid, version, get_model_row(session, fid, version).tensor_specs)


# ---------------------------------------------------------------------------------------------- API


def store_initial(services: Services, fid: str, body: bytearray) -> tuple[ModelVersion, bool]:
    """Model version 0 from the operator's upload; (the version, whether it was created rather than replayed)."""
    header = validate_model_body(body)
    sha256 = sha256_hex(body)
    with services.db.read() as session:
        fed = federations.get_row(session, fid)
        if fed.status in federations.TERMINAL:
            raise ProblemError(ErrorCode.FEDERATION_NOT_RUNNING, f"federation {fid} is {fed.status}")
        existing = session.get(ModelVersionRow, (fid, 0))
    if existing is not None:
        if existing.sha256 == sha256:
            return model_schema(existing), False
        raise ProblemError(ErrorCode.CONFLICT, "model version 0 already exists; later versions come from rounds")
    services.blobs.put(body, sha256)
    row = ModelVersionRow(federation_id=fid, version=0, sha256=sha256, size_bytes=len(body), round=None,
                          tensor_specs=tensor_specs(header), momentum_sha256=None, created_at=utcnow())
    try:
        with services.db.write() as session:
            session.add(row)
    except IntegrityError as exc:
        raise ProblemError(ErrorCode.CONFLICT, "model version 0 was uploaded concurrently") from exc
    return model_schema(row), True


def list_models(services: Services, fid: str) -> list[ModelVersion]:
    with services.db.read() as session:
        federations.get_row(session, fid)
        rows = session.scalars(select(ModelVersionRow).where(ModelVersionRow.federation_id == fid)
                               .order_by(ModelVersionRow.version))
        return [model_schema(r) for r in rows]


def get_model(services: Services, fid: str, v: str) -> ModelVersion:
    """Model version ``v`` (a number or ``latest``)."""
    with services.db.read() as session:
        federations.get_row(session, fid)
        return model_schema(get_model_row(session, fid, parse_version(v)))


def model_weights(services: Services, fid: str, v: str) -> tuple[Buffer, str]:
    """The weights of model version ``v`` and their sha256."""
    with services.db.read() as session:
        federations.get_row(session, fid)
        row = get_model_row(session, fid, parse_version(v))
    return services.blobs.get(row.sha256), row.sha256


def get_prototypes(services: Services, fid: str, v: str) -> PrototypeSet:
    """The summary of the complete prototypes of model version ``v`` (a number or ``latest``)."""
    with services.db.read() as session:
        federations.get_row(session, fid)
        return prototype_schema(get_prototype_row(session, fid, parse_version(v)))


def prototype_tensors(services: Services, fid: str, v: str) -> tuple[Buffer, str]:
    """The complete prototypes of model version ``v`` (safetensors) and their sha256."""
    with services.db.read() as session:
        federations.get_row(session, fid)
        row = get_prototype_row(session, fid, parse_version(v))
    return services.blobs.get(row.sha256), row.sha256
