"""coordinator.aggregation against independent plain numpy computations."""

from __future__ import annotations

import mmap
import tracemalloc
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from coordinator.aggregation import aggregate_prototypes, fedopt_step, weighted_average
from coordinator.aggregation.fedavg import BLOCK_ELEMENTS
from mfcpl.wire.tensors import LocalPrototypes, PrototypeTable, Update, encode, encode_update

# One tensor longer than a block and not a multiple of it, so the blocked path and its tail are exercised.
# (No 0-d tensor: mfcpl.wire.tensors.encode stores those as shape [1].)
SHAPES = {"enc.weight": (3, BLOCK_ELEMENTS + 1001), "enc.bias": (7,), "head.weight": (6, 64), "one": (1,)}


def random_weights(rng: np.random.Generator, shapes: dict[str, tuple[int, ...]] = SHAPES) -> dict[str, np.ndarray]:
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def update_body(weights: dict[str, np.ndarray], num_samples: int, protos: dict | None = None) -> bytes:
    return encode_update(Update(weights=weights, num_samples=num_samples, base_model_version=0,
                                prototypes=protos or {}))


def plain_average(models: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    w = np.asarray(weights, dtype=np.float64)
    return {name: np.tensordot(w / w.sum(), np.stack([m[name].astype(np.float64) for m in models]), axes=1)
            for name in models[0]}


def mmapped(stack: ExitStack, path: Path, body: bytes) -> mmap.mmap:
    path.write_bytes(body)
    f = stack.enter_context(path.open("rb"))
    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


# ---------------------------------------------------------------- weighted_average


def test_weighted_average_equals_plain_weighted_mean() -> None:
    rng = np.random.default_rng(0)
    models = [random_weights(rng) for _ in range(5)]
    samples = [3, 10, 1, 250, 7]
    result = weighted_average([(update_body(m, n), n) for m, n in zip(models, samples, strict=True)])
    expected = plain_average(models, samples)
    assert set(result) == set(SHAPES)
    for name, value in expected.items():
        assert result[name].dtype == np.float32
        assert result[name].shape == SHAPES[name]
        np.testing.assert_allclose(result[name], value, rtol=1e-5, atol=1e-6)


def test_every_buffer_kind_gives_the_same_result_and_mmap_can_close(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    models = [random_weights(rng) for _ in range(3)]
    bodies = [update_body(m, i + 1) for i, m in enumerate(models)]
    reference = weighted_average([(b, i + 1) for i, b in enumerate(bodies)])
    with ExitStack() as stack:
        maps = [mmapped(stack, tmp_path / f"u{i}.safetensors", b) for i, b in enumerate(bodies)]
        kinds = [bytearray(bodies[0]), memoryview(bodies[1]), maps[2]]
        result = weighted_average([(buf, i + 1) for i, buf in enumerate(kinds)])
        for m in maps:
            m.close()  # raises BufferError if a view into the map outlived the call
    for name in reference:
        np.testing.assert_array_equal(result[name], reference[name])


def test_streaming_in_two_parts_equals_one_batch() -> None:
    rng = np.random.default_rng(2)
    models = [random_weights(rng) for _ in range(6)]
    samples = [5, 1, 9, 2, 2, 40]
    bodies = [update_body(m, n) for m, n in zip(models, samples, strict=True)]
    whole = weighted_average(list(zip(bodies, samples, strict=True)))
    first = weighted_average(list(zip(bodies[:2], samples[:2], strict=True)))
    second = weighted_average(list(zip(bodies[2:], samples[2:], strict=True)))
    combined = weighted_average([(update_body(first, 1), sum(samples[:2])), (update_body(second, 1), sum(samples[2:]))])
    for name in whole:
        np.testing.assert_allclose(combined[name], whole[name], rtol=1e-5, atol=1e-6)


def test_single_source_returns_its_tensors_and_ignores_other_prefixes() -> None:
    rng = np.random.default_rng(3)
    model = random_weights(rng)
    protos = {"shared": LocalPrototypes(np.array([0, 2]), rng.standard_normal((2, 4)).astype(np.float32),
                                        np.array([3.0, 1.0], np.float32))}
    body = update_body(model, 17, protos)
    result = weighted_average([(body, 17)])
    assert set(result) == set(model)
    for name in model:
        np.testing.assert_allclose(result[name], model[name], rtol=1e-6)
    assert set(weighted_average([(body, 1)], prefix="prototypes/")) == {"shared"}


def test_mixed_dtypes_keep_their_dtype_and_round_integers() -> None:
    a = {"h": np.array([1.0, -2.0], np.float16), "d": np.array([1e-9, 1.0], np.float64),
         "steps": np.array([1, 10], np.int64), "mask": np.array([True, False]), "small": np.array([0, 255], np.uint8)}
    b = {"h": np.array([3.0, 2.0], np.float16), "d": np.array([3e-9, 2.0], np.float64),
         "steps": np.array([2, 20], np.int64), "mask": np.array([False, True]), "small": np.array([1, 254], np.uint8)}
    result = weighted_average([(update_body(a, 1), 1), (update_body(b, 3), 3)])
    assert {k: v.dtype for k, v in result.items()} == {k: v.dtype for k, v in a.items()}
    np.testing.assert_array_equal(result["h"], np.array([2.5, 1.0], np.float16))
    np.testing.assert_allclose(result["d"], [2.5e-9, 1.75], rtol=1e-14)
    np.testing.assert_array_equal(result["steps"], [2, 18])  # 1.75 -> 2, 17.5 -> 18 (round half to even)
    np.testing.assert_array_equal(result["mask"], [False, True])
    np.testing.assert_array_equal(result["small"], [1, 254])  # 0.75 -> 1, 254.25 -> 254, no overflow


def test_memory_stays_o_model_over_fifty_mmapped_sources(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    shapes = {"a": (512, 1024), "b": (1024, 500), "c": (1000,)}  # ~1.05M float32 parameters
    model_bytes = sum(int(np.prod(s)) for s in shapes.values()) * 4
    with ExitStack() as stack:
        sources = []
        for i in range(50):
            body = update_body(random_weights(rng, shapes), i + 1)
            sources.append((mmapped(stack, tmp_path / f"u{i}.safetensors", body), float(i + 1)))
        del body
        tracemalloc.start()
        try:
            result = weighted_average(sources)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result["a"].shape == (512, 1024)
    assert peak < 1.5 * model_bytes, f"peak {peak} bytes for a model of {model_bytes} bytes"


@pytest.mark.parametrize("weight", [0, -1.0, float("nan"), float("inf")])
def test_bad_weights_are_refused(weight: float) -> None:
    body = update_body(random_weights(np.random.default_rng(5)), 1)
    with pytest.raises(ValueError, match="weight must be"):
        weighted_average([(body, 1.0), (body, weight)])


def test_no_sources_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one source"):
        weighted_average([])


def mismatched_models() -> Iterator[tuple[dict[str, np.ndarray], str]]:
    good = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    yield {"w": good["w"]}, r"missing \['weights/b'\]"
    yield {**good, "extra": np.zeros(1, np.float32)}, r"unexpected \['weights/extra'\]"
    yield {**good, "w": np.zeros((3, 2), np.float32)}, r"'weights/w' has shape \[3, 2\], expected \[2, 3\]"
    yield {**good, "b": np.zeros(3, np.float64)}, "'weights/b' has dtype F64, expected F32"


@pytest.mark.parametrize(("other", "message"), list(mismatched_models()))
def test_mismatched_sources_are_refused(other: dict[str, np.ndarray], message: str) -> None:
    good = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match="source 1: .*" + message):
        weighted_average([(update_body(good, 1), 1), (update_body(other, 1), 1)])


def test_raw_safetensors_without_update_metadata_are_accepted() -> None:
    # Aggregation reads tensors only; the metadata was validated on upload.
    body = encode({"weights/x": np.array([2.0, 4.0], np.float32)})
    np.testing.assert_array_equal(weighted_average([(body, 2), (body, 5)])["x"], [2.0, 4.0])


# ---------------------------------------------------------------- fedopt_step


def test_fedopt_with_unit_lr_and_no_momentum_is_fedavg() -> None:
    rng = np.random.default_rng(6)
    global_w, averaged = random_weights(rng), random_weights(rng)
    new, momentum = fedopt_step(global_w, averaged, None, server_lr=1.0, server_momentum=0.0)
    for name in global_w:
        np.testing.assert_allclose(new[name], averaged[name], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(momentum[name], global_w[name] - averaged[name], rtol=1e-6)


def test_fedopt_two_steps_follow_the_momentum_rule() -> None:
    rng = np.random.default_rng(7)

    def model(steps: int) -> dict[str, np.ndarray]:
        return {"x": rng.standard_normal(5).astype(np.float32), "steps": np.array([steps], np.int64),
                "d": rng.standard_normal(2)}

    w0, avg1, avg2 = model(3), model(8), model(9)
    lr, beta = 0.5, 0.9
    w1, m1 = fedopt_step(w0, avg1, None, lr, beta)
    w2, m2 = fedopt_step(w1, avg2, m1, lr, beta)
    g1 = w0["x"].astype(np.float64) - avg1["x"]
    x1 = w0["x"] - lr * g1
    mom2 = beta * g1 + (x1 - avg2["x"])
    np.testing.assert_allclose(w2["x"], x1 - lr * mom2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m2["x"], mom2, rtol=1e-5, atol=1e-6)
    assert w2["x"].dtype == np.float32 and m2["x"].dtype == np.float32
    assert w2["d"].dtype == np.float64 and m2["d"].dtype == np.float64
    assert w2["steps"] == 9 and w2["steps"].dtype == np.int64 and "steps" not in m2
    assert w0["steps"] == 3  # inputs untouched


def test_fedopt_refuses_bad_settings_and_mismatches() -> None:
    w = {"x": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match="server_lr"):
        fedopt_step(w, w, None, 0.0, 0.9)
    with pytest.raises(ValueError, match="server_momentum"):
        fedopt_step(w, w, None, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"averaged: .*missing \['x'\]"):
        fedopt_step(w, {"y": np.zeros(3, np.float32)}, None, 1.0, 0.9)
    with pytest.raises(ValueError, match=r"momentum: tensor 'x' has shape \[4\]"):
        fedopt_step(w, w, {"x": np.zeros(4, np.float32)}, 1.0, 0.9)


# ---------------------------------------------------------------- aggregate_prototypes


def protos(classes: list[int], vectors: list[list[float]], counts: list[float]) -> LocalPrototypes:
    return LocalPrototypes(np.array(classes, np.int64), np.array(vectors, np.float32), np.array(counts, np.float32))


CLIENTS = [
    {"shared": protos([0, 2], [[1, 0], [0, 4]], [1, 3]), "acc": protos([1], [[2, 2]], [5])},
    {"shared": protos([2], [[0, 8]], [1])},
    {"shared": protos([0], [[3, 0]], [3]), "acc": protos([1], [[4, 0]], [5])},
]


def test_count_weighted_prototypes() -> None:
    out = aggregate_prototypes(CLIENTS, num_classes=4, previous=None)
    assert set(out) == {"shared", "acc"}
    shared = out["shared"]
    assert shared.vectors.dtype == np.float32 and shared.vectors.shape == (4, 2)
    np.testing.assert_allclose(shared.vectors, [[(1 + 9) / 4, 0], [0, 0], [0, (12 + 8) / 4], [0, 0]])
    np.testing.assert_array_equal(shared.counts, [4, 0, 4, 0])
    np.testing.assert_array_equal(shared.coverage, [True, False, True, False])
    np.testing.assert_allclose(out["acc"].vectors[1], [3, 1])
    np.testing.assert_array_equal(out["acc"].counts, [0, 10, 0, 0])


def test_plain_mean_prototypes_keep_summed_counts() -> None:
    shared = aggregate_prototypes(CLIENTS, num_classes=4, previous=None, weighting="mean")["shared"]
    np.testing.assert_allclose(shared.vectors, [[2, 0], [0, 0], [0, 6], [0, 0]])
    np.testing.assert_array_equal(shared.counts, [4, 0, 4, 0])


def test_classes_and_levels_nobody_sent_keep_their_previous_prototype() -> None:
    previous = {
        "shared": PrototypeTable(np.array([[9, 9], [7, 7], [9, 9], [5, 5]], np.float32),
                                 np.array([1, 2, 1, 6], np.float32)),
        "gyro": PrototypeTable(np.ones((4, 3), np.float32), np.array([0, 1, 0, 0], np.float32)),
    }
    out = aggregate_prototypes(CLIENTS, num_classes=4, previous=previous)
    np.testing.assert_allclose(out["shared"].vectors, [[2.5, 0], [7, 7], [0, 5], [5, 5]])
    np.testing.assert_array_equal(out["shared"].counts, [4, 2, 4, 6])
    np.testing.assert_array_equal(out["gyro"].vectors, previous["gyro"].vectors)
    np.testing.assert_array_equal(out["gyro"].counts, previous["gyro"].counts)
    assert out["gyro"].vectors is not previous["gyro"].vectors
    np.testing.assert_array_equal(previous["shared"].counts, [1, 2, 1, 6])  # input untouched


def test_prototypes_match_a_plain_loop_on_random_data() -> None:
    rng = np.random.default_rng(8)
    num_classes, dim = 10, 16
    sets = []
    for _ in range(20):
        classes = np.sort(rng.choice(num_classes, size=rng.integers(0, num_classes + 1), replace=False))
        sets.append({"shared": LocalPrototypes(classes, rng.standard_normal((len(classes), dim)).astype(np.float32),
                                               rng.integers(1, 50, len(classes)).astype(np.float32))})
    for weighting in ("count", "mean"):
        out = aggregate_prototypes(sets, num_classes, None, weighting)["shared"]
        for k in range(num_classes):
            rows = [(s["shared"].vectors[i], s["shared"].counts[i]) for s in sets
                    for i in np.flatnonzero(s["shared"].classes == k)]
            if not rows:
                assert out.counts[k] == 0 and not out.vectors[k].any()
                continue
            w = np.array([c for _, c in rows], np.float64) if weighting == "count" else np.ones(len(rows))
            np.testing.assert_allclose(out.vectors[k], np.average([v for v, _ in rows], axis=0, weights=w), rtol=1e-5)
            assert out.counts[k] == sum(c for _, c in rows)


@pytest.mark.parametrize(
    ("local", "previous", "message"),
    [
        ({"shared": protos([4], [[1, 1]], [1])}, None, r"class ids must be in \[0, 4\)"),
        ({"shared": protos([1, 1], [[1, 1], [2, 2]], [1, 1])}, None, "distinct"),
        ({"shared": protos([1], [[1, 1]], [0])}, None, "counts must be finite and > 0"),
        ({"shared": protos([1], [[1, 1, 1]], [1])}, None, "dimensions differ"),
        ({"shared": protos([1], [[1, 1]], [1])},
         {"shared": PrototypeTable(np.zeros((4, 3), np.float32), np.zeros(4, np.float32))}, "previous prototypes have"),
        ({"shared": protos([1], [[1, 1]], [1])},
         {"shared": PrototypeTable(np.zeros((3, 2), np.float32), np.zeros(3, np.float32))}, "expected vectors"),
    ],
)
def test_bad_prototypes_are_refused(local: dict, previous: dict | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        aggregate_prototypes([CLIENTS[0], local], num_classes=4, previous=previous)


def test_unknown_weighting_is_refused() -> None:
    with pytest.raises(ValueError, match="weighting"):
        aggregate_prototypes(CLIENTS, 4, None, weighting="median")


def test_aggregate_round_matches_its_parts_and_keeps_dtypes() -> None:
    from coordinator.aggregation import aggregate_round
    from mfcpl.wire.schemas import FederationCreate, ModalitySpec

    rng = np.random.default_rng(3)
    model = {"w": rng.standard_normal((4, 3)).astype(np.float32), "n": np.array([2], dtype=np.int64)}
    bodies = []
    for k, n in enumerate((10, 30)):
        weights = {"w": rng.standard_normal((4, 3)).astype(np.float32), "n": np.array([k], dtype=np.int64)}
        protos = {"shared": LocalPrototypes(np.array([k]), np.full((1, 2), float(k), np.float32),
                                            np.array([n], np.float32))}
        bodies.append((encode_update(Update(weights, n, 0, protos)), float(n)))
    base = {"name": "r", "num_classes": 3, "modalities": [ModalitySpec(name="a", kind="vector", shape=[3])]}
    dtypes = {k: v.dtype for k, v in model.items()}

    fedavg = aggregate_round(FederationCreate(**base, algorithm="fedavg"), bodies, dtypes)
    expected = weighted_average(bodies)
    assert np.array_equal(fedavg.weights["w"], expected["w"]) and fedavg.weights["n"].dtype == np.int64
    assert fedavg.state is None
    assert fedavg.prototypes is not None and fedavg.prototypes["shared"].counts.tolist() == [10.0, 30.0, 0.0]

    config = FederationCreate(**base, algorithm="fedopt")
    with pytest.raises(ValueError, match="fedopt needs"):
        aggregate_round(config, bodies, dtypes)
    fedopt = aggregate_round(config, bodies, dtypes, global_weights=model)
    new, momentum = fedopt_step(model, expected, None, config.training.server_lr, config.training.server_momentum)
    assert np.allclose(fedopt.weights["w"], new["w"]) and fedopt.state is not None
