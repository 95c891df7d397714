"""Checks of an update body against its round, from the safetensors header plus one pass over float bytes.

Pure functions: they raise :class:`ProblemError` and change nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from coordinator.model_versions.service import first_non_finite
from coordinator.problems import ProblemError
from mfcpl.wire.constants import SHARED_LEVEL
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.tensors import (
    PROTO_CLASSES_PREFIX,
    PROTO_COUNTS_PREFIX,
    PROTO_PREFIX,
    WEIGHTS_PREFIX,
    Header,
    TensorFormatError,
    parse_update_metadata,
    read_header,
    tensor_view,
)


@dataclass(frozen=True)
class ValidatedUpdate:
    num_samples: int
    metrics: dict[str, float]
    prototype_dims: dict[str, int]


def _check_weights(header: Header, specs: Mapping[str, list[Any]]) -> None:
    present = {n[len(WEIGHTS_PREFIX):] for n in header.tensors if n.startswith(WEIGHTS_PREFIX)}
    missing = sorted(set(specs) - present)
    if missing:
        raise ProblemError(ErrorCode.MISSING_TENSOR, f"update lacks {len(missing)} model tensor(s), e.g. "
                           f"{WEIGHTS_PREFIX}{missing[0]!r}")
    extra = sorted(present - set(specs))
    if extra:
        raise ProblemError(ErrorCode.UNKNOWN_TENSOR,
                           f"tensor {WEIGHTS_PREFIX}{extra[0]!r} is not in the round's model")
    for name, (dtype, shape) in specs.items():
        info = header.tensors[WEIGHTS_PREFIX + name]
        if info.dtype != dtype:
            raise ProblemError(ErrorCode.DTYPE_MISMATCH, f"tensor {WEIGHTS_PREFIX}{name!r} is {info.dtype}, the "
                               f"model's is {dtype}")
        if list(info.shape) != list(shape):
            raise ProblemError(ErrorCode.SHAPE_MISMATCH, f"tensor {WEIGHTS_PREFIX}{name!r} has shape "
                               f"{list(info.shape)}, the model's is {list(shape)}")


def _prototype_levels(header: Header) -> set[str]:
    levels: set[str] = set()
    for name in header.tensors:
        if name.startswith(WEIGHTS_PREFIX):
            continue
        for prefix in (PROTO_CLASSES_PREFIX, PROTO_COUNTS_PREFIX, PROTO_PREFIX):
            if name.startswith(prefix):
                levels.add(name[len(prefix):])
                break
        else:
            raise ProblemError(ErrorCode.UNKNOWN_TENSOR, f"tensor {name!r} is neither weights/, prototypes/, "
                               "prototype_classes/ nor prototype_counts/")
    return levels


def _check_prototypes(body: Any, header: Header, num_classes: int, allowed_levels: set[str],
                      expected_dims: Mapping[str, int]) -> dict[str, int]:
    dims: dict[str, int] = {}
    for level in sorted(_prototype_levels(header)):
        if level not in allowed_levels:
            raise ProblemError(ErrorCode.UNKNOWN_TENSOR, f"prototype level {level!r} is neither {SHARED_LEVEL!r} nor "
                               f"a declared modality ({sorted(allowed_levels - {SHARED_LEVEL})})")
        names = (PROTO_PREFIX + level, PROTO_CLASSES_PREFIX + level, PROTO_COUNTS_PREFIX + level)
        for name in names:
            if name not in header.tensors:
                raise ProblemError(ErrorCode.MISSING_TENSOR, f"prototype level {level!r} lacks tensor {name!r}")
        vectors, classes, counts = (header.tensors[n] for n in names)
        for info, dtype in ((vectors, "F32"), (classes, "I64"), (counts, "F32")):
            if info.dtype != dtype:
                raise ProblemError(ErrorCode.DTYPE_MISMATCH,
                                   f"tensor {info.name!r} must be {dtype}, not {info.dtype}")
        if len(vectors.shape) != 2 or vectors.shape[0] < 1 or vectors.shape[1] < 1:
            raise ProblemError(ErrorCode.SHAPE_MISMATCH, f"tensor {vectors.name!r} must be [n, d] with n, d >= 1, "
                               f"got {list(vectors.shape)}")
        n, d = vectors.shape
        for info in (classes, counts):
            if list(info.shape) != [n]:
                raise ProblemError(ErrorCode.SHAPE_MISMATCH, f"tensor {info.name!r} must have shape [{n}], "
                                   f"got {list(info.shape)}")
        if level in expected_dims and expected_dims[level] != d:
            raise ProblemError(ErrorCode.SHAPE_MISMATCH, f"prototypes of level {level!r} have dimension {d}, "
                               f"expected {expected_dims[level]}")
        class_ids = tensor_view(body, classes)
        if class_ids.size and (class_ids.min() < 0 or class_ids.max() >= num_classes):
            bad = int(class_ids[(class_ids < 0) | (class_ids >= num_classes)][0])
            raise ProblemError(ErrorCode.CLASS_OUT_OF_RANGE, f"{classes.name!r} holds class id {bad}, outside "
                               f"[0, {num_classes})")
        if np.unique(class_ids).size != class_ids.size:
            raise ProblemError(ErrorCode.MALFORMED_TENSORS, f"{classes.name!r} repeats a class id")
        count_values = tensor_view(body, counts)
        if not np.isfinite(count_values).all():
            raise ProblemError(ErrorCode.NON_FINITE, f"tensor {counts.name!r} holds NaN or Inf")
        if (count_values <= 0).any():
            raise ProblemError(ErrorCode.MALFORMED_TENSORS, f"{counts.name!r} must be > 0 for every row")
        dims[level] = int(d)
    return dims


def validate_update(body: Any, *, specs: Mapping[str, list[Any]], num_classes: int, modalities: set[str],
                    expected_dims: Mapping[str, int], input_model_version: int) -> ValidatedUpdate:
    try:
        header = read_header(body)
        num_samples, base_version, metrics = parse_update_metadata(header.metadata)
    except TensorFormatError as exc:
        raise ProblemError.from_tensor_error(exc) from exc
    if base_version != input_model_version:
        raise ProblemError(ErrorCode.STALE_ROUND, f"update was trained from model version {base_version}; "
                           f"this round uses version {input_model_version}")
    _check_weights(header, specs)
    dims = _check_prototypes(body, header, num_classes, modalities | {SHARED_LEVEL}, expected_dims)
    bad = first_non_finite(body, header)
    if bad is not None:
        raise ProblemError(ErrorCode.NON_FINITE, f"tensor {bad!r} holds NaN or Inf")
    return ValidatedUpdate(num_samples=num_samples, metrics=metrics, prototype_dims=dims)
