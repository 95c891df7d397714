"""FedAvg: the sample-weighted mean of many updates, streamed from their stored bytes.

Memory is O(model size): one accumulator per tensor plus a cache-sized scratch block, whatever the number
of sources. Each source is read once, zero-copy, through :func:`client_sdk.tensors.tensor_view`.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from client_sdk.tensors import Header, TensorInfo, numpy_dtype, read_header, tensor_view

Buffer = bytes | bytearray | memoryview | mmap.mmap

# Elements per block when folding a large tensor: 256 KiB of float32 scratch plus the matching slice of the
# accumulator stay in L2 while the source slice streams through.
BLOCK_ELEMENTS = 64 * 1024


@dataclass(frozen=True)
class _Slot:
    """One output tensor: where it comes from and how it is accumulated."""

    name: str  # full name in the update, prefix included
    code: str  # safetensors dtype code
    shape: tuple[int, ...]
    acc_dtype: np.dtype


def _accumulator_dtype(code: str) -> np.dtype:
    if code == "F32" or code == "F16":
        return np.dtype(np.float32)
    return np.dtype(np.float64)  # F64 and every integer/bool tensor


def _slots(header: Header, prefix: str) -> list[_Slot]:
    infos = sorted((i for n, i in header.tensors.items() if n.startswith(prefix)), key=lambda i: i.start)
    return [_Slot(i.name, i.dtype, i.shape, _accumulator_dtype(i.dtype)) for i in infos]


def _check_matches(header: Header, slots: Sequence[_Slot], prefix: str, index: int) -> list[TensorInfo]:
    """The source's tensors in slot order, or ValueError naming the first difference from source 0."""
    names = {n for n in header.tensors if n.startswith(prefix)}
    expected = {s.name for s in slots}
    if names != expected:
        missing = sorted(expected - names)
        extra = sorted(names - expected)
        raise ValueError(f"source {index}: tensor names differ from source 0 (missing {missing}, unexpected {extra})")
    infos = []
    for s in slots:
        info = header.tensors[s.name]
        if info.shape != s.shape:
            raise ValueError(
                f"source {index}: tensor {s.name!r} has shape {list(info.shape)}, expected {list(s.shape)}"
            )
        if info.dtype != s.code:
            raise ValueError(f"source {index}: tensor {s.name!r} has dtype {info.dtype}, expected {s.code}")
        infos.append(info)
    return infos


def _normalised_weights(sources: Sequence[tuple[Buffer, float]]) -> list[float]:
    if not sources:
        raise ValueError("weighted_average needs at least one source")
    weights = [float(w) for _, w in sources]
    for i, w in enumerate(weights):
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"source {i}: weight must be a finite number > 0, got {w!r}")
    total = math.fsum(weights)
    return [w / total for w in weights]


def _fold_tensor(acc: np.ndarray, x: np.ndarray, weight: float, first: bool, scratch: np.ndarray) -> None:
    """acc = w*x (first source) or acc += w*x, in cache-sized blocks so the scratch never leaves L2."""
    w = acc.dtype.type(weight)
    n = acc.size
    if first:
        np.multiply(x, w, out=acc, casting="unsafe")
        return
    if n <= BLOCK_ELEMENTS:
        tmp = scratch[:n] if scratch.dtype == acc.dtype else np.empty(n, acc.dtype)
        np.multiply(x, w, out=tmp, casting="unsafe")
        np.add(acc, tmp, out=acc)
        return
    tmp = scratch if scratch.dtype == acc.dtype else np.empty(BLOCK_ELEMENTS, acc.dtype)
    for lo in range(0, n, BLOCK_ELEMENTS):
        hi = min(lo + BLOCK_ELEMENTS, n)
        t = tmp[: hi - lo]
        a = acc[lo:hi]
        np.multiply(x[lo:hi], w, out=t, casting="unsafe")
        np.add(a, t, out=a)


def _fold_source(
    accs: list[np.ndarray], buf: Buffer, infos: Sequence[TensorInfo], weight: float, first: bool, scratch: np.ndarray
) -> None:
    # Views into ``buf`` live only inside this call, so the caller may close its mmap as soon as we return.
    for acc, info in zip(accs, infos, strict=True):
        _fold_tensor(acc, tensor_view(buf, info).reshape(-1), weight, first, scratch)


def _finish(acc: np.ndarray, slot: _Slot) -> np.ndarray:
    target = numpy_dtype(slot.code)
    if target == acc.dtype:
        return acc.reshape(slot.shape)
    if target.kind == "f":
        return acc.astype(target).reshape(slot.shape)
    if target.kind == "b":
        return (acc >= 0.5).reshape(slot.shape)
    info = np.iinfo(target)
    return np.clip(np.rint(acc), info.min, info.max).astype(target).reshape(slot.shape)


def weighted_average(sources: Sequence[tuple[Buffer, float]], prefix: str = "weights/") -> dict[str, np.ndarray]:
    """Weighted mean of every tensor whose name starts with ``prefix``, keyed without the prefix.

    ``sources`` are stored update bodies with their weight (the client's ``num_samples``); weights must be
    finite and > 0 and are normalised by their sum. Float tensors accumulate in float32 (float64 for F64)
    and come back in their own dtype; integer tensors come back as the rounded weighted mean, booleans as
    the weighted majority. Every source must hold the same prefixed names, shapes and dtypes as the first
    (ValueError otherwise); content (NaN, ranges) is assumed validated on upload.
    """
    fractions = _normalised_weights(sources)
    slots: list[_Slot] = []
    accs: list[np.ndarray] = []
    scratch = np.empty(BLOCK_ELEMENTS, np.float32)
    for index, ((buf, _), fraction) in enumerate(zip(sources, fractions, strict=True)):
        header = read_header(buf)
        if index == 0:
            slots = _slots(header, prefix)
            accs = [np.empty(math.prod(s.shape), s.acc_dtype) for s in slots]
        infos = _check_matches(header, slots, prefix, index)
        _fold_source(accs, buf, infos, fraction, index == 0, scratch)
    return {s.name[len(prefix) :]: _finish(acc, s) for s, acc in zip(slots, accs, strict=True)}
