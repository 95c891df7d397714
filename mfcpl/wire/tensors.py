"""Tensor bodies on the wire and at rest: safetensors, read zero-copy with numpy, never pickle.

Three documents share the safetensors container (8-byte little-endian header length, a JSON header,
then raw little-endian tensor bytes). Each carries ``__metadata__["format"]``:

``mfcpl.model.v1`` - model weights
    one tensor per parameter/buffer, named as in the model's ``state_dict``.

``mfcpl.update.v1`` - a client's update for one round
    ``weights/<name>``           every tensor of the round's input model, same shape and dtype;
    ``prototypes/<level>``       float32 [n, d] local prototypes of level ``shared`` or a modality;
    ``prototype_classes/<level>`` int64 [n] class id of each row (distinct, in [0, num_classes));
    ``prototype_counts/<level>``  float32 [n] samples behind each row (> 0);
    metadata ``num_samples`` (int), ``base_model_version`` (int), ``metrics`` (JSON object of numbers).

``mfcpl.prototypes.v1`` - the coordinator's complete prototypes for one model version
    ``prototypes/<level>`` float32 [C, d] and ``prototype_counts/<level>`` float32 [C]
    (count 0 = no prototype for that class: the coverage mask).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from mmap import mmap
from typing import Any

import numpy as np

from mfcpl.wire.constants import MAX_METRIC_KEY_LENGTH, MAX_METRICS, has_control_characters

Buffer = bytes | bytearray | memoryview | mmap  # what the readers take: a body, or an mmap of a blob file

MODEL_FORMAT = "mfcpl.model.v1"
UPDATE_FORMAT = "mfcpl.update.v1"
PROTOTYPES_FORMAT = "mfcpl.prototypes.v1"

WEIGHTS_PREFIX = "weights/"
PROTO_PREFIX = "prototypes/"
PROTO_CLASSES_PREFIX = "prototype_classes/"
PROTO_COUNTS_PREFIX = "prototype_counts/"

MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_METRICS_JSON_CHARS = 256 * 1024
"""The longest ``metrics`` metadata value read: 256 metrics of 128-character keys fit many times over."""
MAX_NUM_SAMPLES = 2**31 - 1

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES = {dt: code for code, dt in _DTYPES.items()}


class TensorFormatError(ValueError):
    """A tensor body that cannot be read, or whose content breaks the documented layout.

    ``code`` is one of the :class:`mfcpl.wire.errors.ErrorCode` values, so the coordinator can turn it
    into a problem document unchanged.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors code, e.g. "F32"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the document
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def dtype_code(dtype: np.dtype) -> str:
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
    try:
        return _CODES[dt]
    except KeyError as exc:
        raise TensorFormatError("malformed_tensors", f"dtype {dtype} cannot be stored") from exc


def numpy_dtype(code: str) -> np.dtype:
    return _DTYPES[code]


class _DuplicateKeyError(ValueError):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for json: a JSON object as a dict, refusing a key given twice (no "last wins")."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str | bytes) -> Any:
    """``json.loads`` as strict as RFC 8259 readers are: UTF-8 only, no NaN/Infinity, no duplicate keys.

    Raises ``ValueError`` (``json.JSONDecodeError``, ``UnicodeDecodeError`` and duplicate keys included) or
    ``RecursionError``.
    """
    if not isinstance(text, str):
        text = text.decode("utf-8")  # json.loads would also guess UTF-16/32 from bytes
    return json.loads(text, object_pairs_hook=_unique_object, parse_constant=_no_constant)


def _is_utf8(text: str) -> bool:
    """False for a string with lone surrogates (``"\\ud800"`` escapes), which no UTF-8 store can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _element_count(shape: tuple[int, ...], limit: int) -> int:
    """The product of ``shape``, or ``limit + 1`` as soon as it passes ``limit`` (never a huge product)."""
    if 0 in shape:
        return 0
    count = 1
    for dim in shape:
        count *= dim
        if count > limit:
            return limit + 1
    return count


def _short(name: str) -> str:
    """A name for an error message: its first 64 characters (a header may hold megabyte-long names)."""
    return repr(name) if len(name) <= 64 else repr(name[:64]) + "..."


def read_header(buf: Buffer) -> Header:
    """Parse and bound-check a safetensors header without touching the tensor bytes.

    As strict as the official safetensors reader: the header is a UTF-8 JSON object without duplicate keys
    (also inside ``__metadata__`` and the tensor entries); the tensors, ordered by offset, tile the data area
    exactly (no gap, no overlap, no trailing bytes). Any other body raises :class:`TensorFormatError`.
    """
    view = memoryview(buf)
    if len(view) < 8:
        raise TensorFormatError("malformed_tensors", "body is shorter than the 8-byte safetensors header length")
    (n,) = struct.unpack("<Q", view[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(view):
        raise TensorFormatError("malformed_tensors", f"header length {n} does not fit a body of {len(view)} bytes")
    try:
        raw = strict_json(bytes(view[8 : 8 + n]))
    except _DuplicateKeyError as exc:
        raise TensorFormatError("malformed_tensors", f"header JSON has a {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise TensorFormatError("malformed_tensors", f"header is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise TensorFormatError("malformed_tensors", "header must be a JSON object")
    metadata = raw.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _is_utf8(k) and _is_utf8(v) for k, v in metadata.items()
    ):
        raise TensorFormatError("malformed_tensors", "__metadata__ must map strings to strings")
    data_start = 8 + n
    data_len = len(view) - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in raw.items():
        if not _is_utf8(name):
            raise TensorFormatError("malformed_tensors", f"tensor name {_short(name)} is not valid Unicode")
        try:
            code, dims, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError) as exc:
            raise TensorFormatError("malformed_tensors", f"tensor {_short(name)}: bad header entry") from exc
        if not (isinstance(dims, list) and isinstance(offsets, list) and len(offsets) == 2
                and all(type(x) is int for x in (*dims, *offsets))):  # no floats, bools or strings
            raise TensorFormatError("malformed_tensors", f"tensor {_short(name)}: shape and offsets must be integers")
        shape: tuple[int, ...] = tuple(dims)
        begin, end = offsets
        if not isinstance(code, str) or code not in _DTYPES:
            raise TensorFormatError("dtype_mismatch", f"tensor {_short(name)}: unsupported dtype "
                                    f"{_short(code) if isinstance(code, str) else type(code).__name__}")
        if any(not 0 <= s < 2**64 for s in shape):
            raise TensorFormatError("malformed_tensors", f"tensor {_short(name)}: dimension out of range")
        itemsize = _DTYPES[code].itemsize
        expected = _element_count(shape, data_len // itemsize) * itemsize
        if not 0 <= begin <= end <= data_len or end - begin != expected:
            raise TensorFormatError(
                "malformed_tensors",
                f"tensor {_short(name)}: offsets [{begin}, {end}) do not hold shape {list(shape)[:8]} of {code}",
            )
        tensors[name] = TensorInfo(name, code, shape, data_start + begin, data_start + end)
    # The tensors must tile the data area in offset order, as the official reader demands: every byte belongs
    # to exactly one tensor, so nothing can hide between, under or after them.
    position = data_start
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start != position:
            what = "overlap" if info.start < position else "leave a gap"
            raise TensorFormatError("malformed_tensors", f"tensor byte ranges {what} at tensor {_short(info.name)} "
                                    f"(offset {info.start - data_start}, expected {position - data_start})")
        position = info.end
    if position != len(view):
        raise TensorFormatError("malformed_tensors", f"{len(view) - position} trailing bytes after the last tensor "
                                "are not covered by any tensor")
    return Header(tensors=tensors, metadata=metadata, data_start=data_start)


def tensor_view(buf: Buffer, info: TensorInfo) -> np.ndarray:
    """A read-only numpy view of one tensor's bytes (no copy)."""
    arr = np.frombuffer(buf, dtype=_DTYPES[info.dtype], count=math.prod(info.shape), offset=info.start)
    return arr.reshape(info.shape)


def decode(buf: Buffer) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    header = read_header(buf)
    return {name: tensor_view(buf, info) for name, info in header.tensors.items()}, header.metadata


def encode(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise numpy arrays as safetensors (tensors laid out in name order, header padded to 8 bytes)."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    arrays = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name], order="C")  # keeps 0-d tensors 0-d, unlike ascontiguousarray
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        header[name] = {"dtype": dtype_code(arr.dtype), "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        arrays.append(arr)
        offset += arr.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    out = bytearray(8 + len(head) + offset)
    out[:8] = struct.pack("<Q", len(head))
    out[8 : 8 + len(head)] = head
    pos = 8 + len(head)
    for arr in arrays:
        out[pos : pos + arr.nbytes] = arr.tobytes()
        pos += arr.nbytes
    return bytes(out)


@dataclass
class LocalPrototypes:
    """One level of a client's local prototypes: rows for the classes it saw."""

    classes: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, d]
    counts: np.ndarray  # float32 [n]


@dataclass
class Update:
    weights: dict[str, np.ndarray]
    num_samples: int
    base_model_version: int
    prototypes: dict[str, LocalPrototypes] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def encode_update(update: Update) -> bytes:
    tensors: dict[str, np.ndarray] = {WEIGHTS_PREFIX + k: v for k, v in update.weights.items()}
    for level, p in update.prototypes.items():
        tensors[PROTO_PREFIX + level] = np.asarray(p.vectors, dtype=np.float32)
        tensors[PROTO_CLASSES_PREFIX + level] = np.asarray(p.classes, dtype=np.int64)
        tensors[PROTO_COUNTS_PREFIX + level] = np.asarray(p.counts, dtype=np.float32)
    meta = {
        "format": UPDATE_FORMAT,
        "num_samples": str(int(update.num_samples)),
        "base_model_version": str(int(update.base_model_version)),
        "metrics": json.dumps({k: float(v) for k, v in update.metrics.items()}),
    }
    return encode(tensors, meta)


def parse_update_metadata(metadata: Mapping[str, str]) -> tuple[int, int, dict[str, float]]:
    """(num_samples, base_model_version, metrics) from an update's metadata, strictly checked."""
    if metadata.get("format") != UPDATE_FORMAT:
        raise TensorFormatError("malformed_tensors", f"metadata.format must be {UPDATE_FORMAT!r}")
    metrics_text = metadata.get("metrics", "{}")
    if len(metrics_text) > MAX_METRICS_JSON_CHARS:  # refused before parsing: 256 metrics never need this much
        raise TensorFormatError("malformed_tensors", f"metadata.metrics is over {MAX_METRICS_JSON_CHARS} characters "
                                f"(at most {MAX_METRICS} metrics)")
    try:
        num_samples = int(metadata["num_samples"])
        base = int(metadata["base_model_version"])
        metrics = json.loads(metrics_text, object_pairs_hook=_unique_object)  # NaN parses: refused as non_finite
    except (KeyError, ValueError, RecursionError) as exc:
        raise TensorFormatError("malformed_tensors", f"bad update metadata: {exc}") from exc
    if not 1 <= num_samples <= MAX_NUM_SAMPLES:
        raise TensorFormatError("malformed_tensors", f"num_samples must be an integer in [1, {MAX_NUM_SAMPLES}]")
    if not -1 <= base <= MAX_NUM_SAMPLES:
        raise TensorFormatError("malformed_tensors", "base_model_version is out of range")
    if not isinstance(metrics, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) for k, v in metrics.items()
    ):
        raise TensorFormatError("malformed_tensors", "metrics must be a JSON object of numbers")
    if len(metrics) > MAX_METRICS:
        raise TensorFormatError("malformed_tensors", f"at most {MAX_METRICS} metrics")
    if not all(0 < len(k) <= MAX_METRIC_KEY_LENGTH and not has_control_characters(k) and _is_utf8(k)
               for k in metrics):
        raise TensorFormatError("malformed_tensors", f"metric names must be 1-{MAX_METRIC_KEY_LENGTH} characters "
                                "without NUL or control characters")
    try:
        values = {k: float(v) for k, v in metrics.items()}  # an integer past the float range overflows
    except OverflowError:
        values = {"": math.inf}
    if not all(math.isfinite(v) for v in values.values()):
        raise TensorFormatError("non_finite", "metrics hold NaN or Inf")
    return num_samples, base, values


def _partner(tensors: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    try:
        return tensors[name]
    except KeyError:
        raise TensorFormatError("missing_tensor", f"tensor {name!r} is missing") from None


def decode_update(buf: Buffer) -> Update:
    tensors, metadata = decode(buf)
    num_samples, base, metrics = parse_update_metadata(metadata)
    weights = {k[len(WEIGHTS_PREFIX) :]: v for k, v in tensors.items() if k.startswith(WEIGHTS_PREFIX)}
    protos: dict[str, LocalPrototypes] = {}
    for k, v in tensors.items():
        if k.startswith(PROTO_PREFIX):
            level = k[len(PROTO_PREFIX) :]
            protos[level] = LocalPrototypes(
                classes=_partner(tensors, PROTO_CLASSES_PREFIX + level),
                vectors=v,
                counts=_partner(tensors, PROTO_COUNTS_PREFIX + level),
            )
    return Update(weights, num_samples, base, protos, metrics)


@dataclass
class PrototypeTable:
    """Complete prototypes of one level: dense over classes, count 0 where no prototype exists."""

    vectors: np.ndarray  # float32 [C, d]
    counts: np.ndarray  # float32 [C]

    @property
    def coverage(self) -> np.ndarray:
        return self.counts > 0


def encode_prototypes(levels: Mapping[str, PrototypeTable], model_version: int) -> bytes:
    tensors: dict[str, np.ndarray] = {}
    for level, t in levels.items():
        tensors[PROTO_PREFIX + level] = np.asarray(t.vectors, dtype=np.float32)
        tensors[PROTO_COUNTS_PREFIX + level] = np.asarray(t.counts, dtype=np.float32)
    return encode(tensors, {"format": PROTOTYPES_FORMAT, "model_version": str(model_version)})


def decode_prototypes(buf: Buffer) -> dict[str, PrototypeTable]:
    tensors, metadata = decode(buf)
    if metadata.get("format") != PROTOTYPES_FORMAT:
        raise TensorFormatError("malformed_tensors", f"metadata.format must be {PROTOTYPES_FORMAT!r}")
    out = {}
    for k, v in tensors.items():
        if k.startswith(PROTO_PREFIX):
            level = k[len(PROTO_PREFIX) :]
            out[level] = PrototypeTable(vectors=v, counts=_partner(tensors, PROTO_COUNTS_PREFIX + level))
    return out


def encode_model(weights: Mapping[str, np.ndarray]) -> bytes:
    return encode(weights, {"format": MODEL_FORMAT})


def decode_model(buf: Buffer) -> dict[str, np.ndarray]:
    tensors, _ = decode(buf)
    return tensors
