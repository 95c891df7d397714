"""Model versions and prototype sets: creation, lookup, summaries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coordinator.core import Services
from coordinator.models.orm import ModelVersionRow, PrototypeSetRow
from coordinator.problems import ProblemError
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
        raise ProblemError(422, ErrorCode.MALFORMED_TENSORS, f"metadata.format is {fmt!r}, expected {MODEL_FORMAT!r}")
    if not header.tensors:
        raise ProblemError(422, ErrorCode.MALFORMED_TENSORS, "a model needs at least one tensor")
    bad = first_non_finite(body, header)
    if bad is not None:
        raise ProblemError(422, ErrorCode.NON_FINITE, f"tensor {bad!r} holds NaN or Inf")
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
    """``latest`` -> None, else a non-negative integer (404 otherwise)."""
    if v == "latest":
        return None
    if not v.isdigit():
        raise ProblemError(404, ErrorCode.NOT_FOUND, f"model version must be an integer or 'latest', got {v!r}")
    return int(v)


def get_model_row(session: Session, fid: str, version: int | None) -> ModelVersionRow:
    if version is None:
        version = session.scalar(select(func.max(ModelVersionRow.version)).where(ModelVersionRow.federation_id == fid))
        if version is None:
            raise ProblemError(404, ErrorCode.NOT_FOUND, f"federation {fid} has no model version yet")
    row = session.get(ModelVersionRow, (fid, version))
    if row is None:
        raise ProblemError(404, ErrorCode.NOT_FOUND, f"federation {fid} has no model version {version}")
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
        raise ProblemError(404, ErrorCode.NOT_FOUND, f"federation {fid} has no {which}")
    return row


def model_specs(services: Services, session: Session, fid: str, version: int) -> dict[str, list[Any]]:
    """Tensor specs of a model version (immutable, cached per process)."""
    key = ("specs", fid, version)
    cached = services.cached(key)
    if cached is not None:
        return cached
    return services.remember(key, get_model_row(session, fid, version).tensor_specs)
