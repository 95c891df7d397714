"""FedAvg: the sample-weighted mean of many updates, streamed from their stored bytes.

Memory is O(model size): one accumulator per tensor plus a cache-sized scratch block, whatever the number
of sources. Each source is read once, zero-copy, through :func:`mfcpl.wire.tensors.tensor_view`.
bench/aggregation.py measures it against a plain copy of the same bytes and against Flower's FedAvg.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mfcpl.wire.tensors import Header, TensorInfo, numpy_dtype, read_header, tensor_view

Buffer = bytes | bytearray | memoryview | mmap.mmap

# Elements per block: 256 KiB of float32 accumulator plus as much scratch stay in L2 while the sources' blocks
# stream through. 64 Ki was fastest of 16 Ki..256 Ki on the benchmark machine (docs/benchmarks.md).
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


def _fold_tensor(views: Sequence[np.ndarray], fractions: Sequence[float], acc: np.ndarray, scratch: np.ndarray) -> None:
    """acc = sum_i fractions[i] * views[i], one cache-sized block of the accumulator at a time.

    The block of ``acc`` and ``scratch`` stay in L1/L2 while the same block of every source streams through
    once, so memory traffic is one read of each source plus one write of the result.
    """
    n = acc.size
    weights = [acc.dtype.type(f) for f in fractions]
    first_view, first_weight = views[0], weights[0]
    rest = list(zip(views[1:], weights[1:], strict=True))
    for lo in range(0, n, BLOCK_ELEMENTS):
        hi = min(lo + BLOCK_ELEMENTS, n)
        a = acc[lo:hi]
        t = scratch[: hi - lo]
        np.multiply(first_view[lo:hi], first_weight, out=a, casting="unsafe")
        for view, weight in rest:
            np.multiply(view[lo:hi], weight, out=t, casting="unsafe")
            np.add(a, t, out=a)


def _average_slot(
    slot: _Slot, buffers: Sequence[Buffer], infos: Sequence[TensorInfo], fractions: Sequence[float],
    scratch: dict[np.dtype, np.ndarray],
) -> np.ndarray:
    # Views into the buffers live only inside this call, so the caller may close its mmaps once we return.
    views = [tensor_view(buf, info).reshape(-1) for buf, info in zip(buffers, infos, strict=True)]
    acc = np.empty(math.prod(slot.shape), slot.acc_dtype)
    if slot.acc_dtype not in scratch:
        scratch[slot.acc_dtype] = np.empty(BLOCK_ELEMENTS, slot.acc_dtype)
    _fold_tensor(views, fractions, acc, scratch[slot.acc_dtype])
    return _finish(acc, slot)


def _finish(acc: np.ndarray, slot: _Slot) -> np.ndarray:
    target = numpy_dtype(slot.code)
    if target == acc.dtype:
        return acc.reshape(slot.shape)
    if target.kind == "f":
        return acc.astype(target).reshape(slot.shape)
    if target.kind == "b":
        return (acc >= 0.5).reshape(slot.shape)
    info = np.iinfo(target)
    clipped: np.ndarray = np.clip(np.rint(acc), info.min, info.max)
    return clipped.astype(target).reshape(slot.shape)


def weighted_average(sources: Sequence[tuple[Buffer, float]], prefix: str = "weights/") -> dict[str, np.ndarray]:
    """Weighted mean of every tensor whose name starts with ``prefix``, keyed without the prefix.

    ``sources`` are stored update bodies with their weight (the client's ``num_samples``); weights must be
    finite and > 0 and are normalised by their sum. Float tensors accumulate in float32 (float64 for F64)
    and come back in their own dtype; integer tensors come back as the rounded weighted mean, booleans as
    the weighted majority. Every source must hold the same prefixed names, shapes and dtypes as the first
    (ValueError otherwise, raised before any tensor byte is read); content (NaN, ranges) is assumed
    validated on upload.

    Every tensor byte of every source is read exactly once, zero-copy. The loop runs over blocks of each
    output tensor and, inside, over the sources, so only one block of accumulator and scratch is hot; peak
    memory is the output plus one block, whatever the number of sources (only the sources' headers are kept).
    """
    fractions = _normalised_weights(sources)
    buffers = [buf for buf, _ in sources]
    first = read_header(buffers[0])
    slots = _slots(first, prefix)
    infos = [_check_matches(first, slots, prefix, 0)]
    infos += [_check_matches(read_header(buf), slots, prefix, i) for i, buf in enumerate(buffers[1:], start=1)]
    scratch: dict[np.dtype, np.ndarray] = {}
    out = {}
    for k, slot in enumerate(slots):
        slot_infos = [per_source[k] for per_source in infos]
        out[slot.name[len(prefix) :]] = _average_slot(slot, buffers, slot_infos, fractions, scratch)
    return out
