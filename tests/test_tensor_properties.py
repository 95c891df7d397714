"""Property tests of the safetensors reader (``mfcpl.wire.tensors``), checked against the official reader.

* Random valid documents round-trip through ``encode``/``decode`` and read the same with ``safetensors.numpy``
  (and the official writer's bytes read the same with ours).
* Random corruptions (truncation, trailing bytes, gaps, overlaps, duplicate keys, huge offsets, wrong dtypes or
  shapes, flipped header bytes) give a clean :class:`TensorFormatError`, never another exception; where the
  official reader has a verdict it is the same, except for the documented strictness of ours (duplicate keys
  are refused even where "last wins" would leave a consistent layout, and only the dtypes of ``_DTYPES``).
"""

from __future__ import annotations

import contextlib
import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as official_load
from safetensors.numpy import save as official_save

from mfcpl.wire.tensors import (
    TensorFormatError,
    decode,
    decode_update,
    encode,
    parse_update_metadata,
    read_header,
)

# Deterministic (no example database, the same examples on every run): a failure here is a failure in CI too.
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = ["<f8", "<f4", "<f2", "<i8", "<i4", "<i2", "i1", "u1", "?"]
NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=12).filter(
    lambda s: s != "__metadata__")


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    raw = draw(st.binary(min_size=int(np.prod(shape)) * dtype.itemsize, max_size=int(np.prod(shape)) * dtype.itemsize))
    octets = np.frombuffer(raw, dtype=np.uint8)
    if dtype == np.dtype("?"):
        return (octets != 0).reshape(shape)
    return octets.view(dtype).reshape(shape)


DOCUMENTS = st.tuples(
    st.dictionaries(NAMES, arrays(), min_size=0, max_size=5),
    st.dictionaries(NAMES, st.text(max_size=10), max_size=3),
)


def _verdict(read: Any, buf: bytes) -> str | None:
    """None if ``read`` accepts ``buf``, else the error's text."""
    try:
        read(buf)
    except Exception as exc:  # the official reader raises its own SafetensorError
        return f"{type(exc).__name__}: {exc}"
    return None


def _ours(buf: bytes) -> str | None:
    """Our verdict; anything but a TensorFormatError is a failure of the property."""
    try:
        tensors, _ = decode(buf)
        for arr in tensors.values():
            arr.tobytes()  # the views really are readable
    except TensorFormatError as exc:
        assert exc.code in ("malformed_tensors", "dtype_mismatch"), exc.code
        return exc.detail
    return None


def _by_design(buf: bytes) -> bool:
    """Whether ``buf`` is one of the documents where our reader is stricter than the official one on purpose."""
    duplicates = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal duplicates
        duplicates |= len({k for k, _ in items}) != len(items)
        return dict(items)

    try:
        (n,) = struct.unpack("<Q", buf[:8])
        header = json.loads(buf[8 : 8 + n].decode("utf-8"), object_pairs_hook=pairs)
    except Exception:
        return False
    if duplicates:
        return True
    if isinstance(header, dict):
        known = {"F64", "F32", "F16", "I64", "I32", "I16", "I8", "U8", "BOOL"}
        for name, entry in header.items():
            if name != "__metadata__" and isinstance(entry, dict) and entry.get("dtype") not in known:
                return True
    return False


def _same(arrays_a: dict[str, np.ndarray], arrays_b: dict[str, np.ndarray]) -> None:
    assert set(arrays_a) == set(arrays_b)
    for name, a in arrays_a.items():
        b = arrays_b[name]
        if a.shape == (1,) and b.shape == ():  # safetensors.numpy.load gives 0-d tensors the shape (1,)
            a = a.reshape(())
        assert (a.dtype, a.shape) == (b.dtype, b.shape), name
        assert a.tobytes() == b.tobytes(), name


def _raw(header: dict[str, Any] | str, data: bytes) -> bytes:
    text = header if isinstance(header, str) else json.dumps(header)
    head = text.encode()
    return struct.pack("<Q", len(head)) + head + data


def _layout(buf: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", buf[:8])
    return json.loads(buf[8 : 8 + n]), buf[8 + n :]


@PROPERTY
@given(DOCUMENTS)
def test_valid_documents_round_trip_and_read_like_the_official_reader(document: Any) -> None:
    tensors, metadata = document
    buf = encode(tensors, metadata)
    decoded, meta = decode(buf)
    _same(decoded, {k: np.asarray(v) for k, v in tensors.items()})
    assert meta == metadata
    _same(official_load(buf), decoded)
    if tensors:  # the official writer's bytes (its own layout and padding) read the same with ours
        theirs = official_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata or None)
        _same(decode(theirs)[0], decoded)


@st.composite
def corrupted(draw: st.DrawFn) -> tuple[str, bytes]:
    tensors = draw(st.dictionaries(NAMES, arrays(), min_size=1, max_size=4))
    buf = encode(tensors, draw(st.dictionaries(NAMES, st.text(max_size=6), max_size=2)))
    header, data = _layout(buf)
    names = [k for k in header if k != "__metadata__"]
    name = draw(st.sampled_from(names))
    entry = header[name]
    kind = draw(st.sampled_from(["truncate", "trailing", "gap", "overlap", "duplicate", "huge", "dtype", "shape",
                                 "flip"]))
    if kind == "truncate":
        return kind, buf[: draw(st.integers(0, len(buf) - 1))]
    if kind == "trailing":
        return kind, buf + draw(st.binary(min_size=1, max_size=64))
    if kind == "gap":  # shift every tensor from ``name`` on and put unreferenced bytes in between (or at the end)
        shift = draw(st.integers(1, 16))
        cut = entry["data_offsets"][0]
        for other in names:
            offsets = header[other]["data_offsets"]
            if offsets[0] >= cut:
                header[other]["data_offsets"] = [offsets[0] + shift, offsets[1] + shift]
        return kind, _raw(header, data[:cut] + b"\0" * shift + data[cut:])
    if kind == "overlap":  # a copy of a non-empty tensor under another name, on the same bytes
        if entry["data_offsets"][0] == entry["data_offsets"][1]:
            return "trailing", buf + b"\0"
        header["~copy~" + name] = dict(entry)
        return kind, _raw(header, data)
    if kind == "duplicate":  # the same key twice, in the header or in __metadata__
        text = json.dumps(header)
        key = json.dumps(name)
        if draw(st.booleans()):
            text = text[:-1] + f", {key}: {json.dumps(entry)}}}"
        else:
            text = text[:-1] + ', "__metadata__": {"a": "1", "a": "2"}}' if "__metadata__" not in header else \
                text.replace('"__metadata__": {', '"__metadata__": {"dup": "1", "dup": "2", ', 1)
        return kind, _raw(text, data)
    if kind == "huge":
        big = draw(st.sampled_from([2**32, 2**62, 2**63, 2**64 - 1, 2**64, 10**30]))
        header[name]["data_offsets"] = draw(st.sampled_from([[big, big + 4], [0, big], [big, big]]))
        if header[name]["data_offsets"] == [big, big]:
            header[name]["shape"] = [0]
        return kind, _raw(header, data)
    if kind == "dtype":
        code = draw(st.sampled_from(["F64", "F32", "I8", "BOOL", "X99", "", 3, None]))
        sizes = {"F64": 8, "F32": 4, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
        if code in sizes and (sizes[code] == sizes[entry["dtype"]] or entry["data_offsets"][0] == entry[
                "data_offsets"][1]):
            code = "X99"  # same item size, or an empty tensor: still a valid document
        header[name]["dtype"] = code
        return kind, _raw(header, data)
    if kind == "shape":
        shape = draw(st.sampled_from([[1.5], [True], [-1], "4", [2**64], [10**6, 10**6, 10**6]]))
        if shape == [10**6, 10**6, 10**6] and 0 in entry["shape"]:
            shape = [2**64]  # a zero-sized tensor stays zero-sized (and valid) whatever else its shape holds
        if shape == [1.5] or shape == [True] or shape == "4":
            header[name]["shape"] = shape
        else:
            header[name]["shape"] = list(entry["shape"]) + shape if shape != [-1] else [-1, *entry["shape"]]
        return kind, _raw(header, data)
    # flip: overwrite one byte of the length or the header with a random one (may still be a valid document)
    (n,) = struct.unpack("<Q", buf[:8])
    at = draw(st.integers(0, 8 + n - 1))
    return kind, buf[:at] + bytes([draw(st.integers(0, 255))]) + buf[at + 1 :]


@PROPERTY
@given(corrupted())
def test_corruptions_are_refused_cleanly_like_the_official_reader(case: tuple[str, bytes]) -> None:
    kind, buf = case
    ours = _ours(buf)
    official = _verdict(official_load, buf)
    if kind != "flip":
        assert ours is not None, f"{kind} accepted"
    if not _by_design(buf):
        assert (ours is None) == (official is None), (kind, ours, official)


@PROPERTY
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_a_format_error(buf: bytes) -> None:
    for read in (read_header, decode, decode_update):
        with contextlib.suppress(TensorFormatError):
            read(buf)


@PROPERTY
@given(st.dictionaries(st.sampled_from(["format", "num_samples", "base_model_version", "metrics", "x"]),
                       st.one_of(st.text(max_size=30), st.sampled_from([
                           "mfcpl.update.v1", "1", "0", "-1", "1e400", "NaN", "{}", '{"a": 1, "a": 2}',
                           '{"a": NaN}', '{"a": 1' + "0" * 400 + "}", '{"\\ud800": 1}', '{"a": true}', "[]",
                           "[" * 10_000]))))
def test_update_metadata_is_refused_cleanly(metadata: dict[str, str]) -> None:
    try:
        num_samples, base, metrics = parse_update_metadata(metadata)
    except TensorFormatError as exc:
        assert exc.code in ("malformed_tensors", "non_finite")
        return
    assert num_samples >= 1 and base >= -1 and all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize("case", ["trailing", "gap", "overlap", "duplicate_name", "duplicate_metadata",
                                  "duplicate_field", "metadata_list", "nan_literal", "surrogate_name"])
def test_each_finding_is_refused(case: str) -> None:
    """The outside test's findings, one by one: each was accepted before."""
    a = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    entry = json.dumps(a)
    b = {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}
    bodies = {
        "trailing": _raw({"a": a}, b"\0" * (4 + 4 * 1024 * 1024)),
        "gap": _raw({"a": a, "b": {**b, "data_offsets": [8, 12]}}, b"\0" * 12),
        "overlap": _raw({"a": {**a, "shape": [2], "data_offsets": [0, 8]}, "b": b}, b"\0" * 8),
        "duplicate_name": _raw(f'{{"a": {entry}, "a": {entry}}}', b"\0" * 4),
        "duplicate_metadata": _raw(f'{{"__metadata__": {{"format": "x", "format": "y"}}, "a": {entry}}}',
                                   b"\0" * 4),
        "duplicate_field": _raw('{"a": {"dtype": "F32", "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
                                b"\0" * 4),
        "metadata_list": _raw({"__metadata__": [], "a": a}, b"\0" * 4),
        "nan_literal": _raw('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": NaN}}', b"\0" * 4),
        "surrogate_name": _raw(f'{{"\\ud800": {entry}}}', b"\0" * 4),
    }
    with pytest.raises(TensorFormatError) as refused:
        read_header(bodies[case])
    assert refused.value.code == "malformed_tensors"


def test_metrics_with_duplicate_keys_or_over_the_bounds_are_refused() -> None:
    base = {"format": "mfcpl.update.v1", "num_samples": "1", "base_model_version": "0"}
    for metrics in ['{"loss": 1, "loss": 2}', json.dumps({f"m{i}": 1.0 for i in range(200_000)}),
                    json.dumps({f"m{i}": 1.0 for i in range(257)}), json.dumps({"x" * 129: 1.0})]:
        with pytest.raises(TensorFormatError) as refused:
            parse_update_metadata({**base, "metrics": metrics})
        assert refused.value.code == "malformed_tensors"
    with pytest.raises(TensorFormatError) as overflow:
        parse_update_metadata({**base, "metrics": '{"a": 1' + "0" * 400 + "}"})
    assert overflow.value.code == "non_finite"
