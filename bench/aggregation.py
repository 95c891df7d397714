"""Aggregation throughput: coordinator.aggregation.weighted_average vs a numpy copy and vs Flower's FedAvg.

For N updates of a P-parameter float32 model, the update files are written to a temporary directory and
memory-mapped, as the coordinator does with stored updates. Per configuration, in one process:

* ours   - ``weighted_average`` over the mmaps (fresh mmaps each repetition, so page mapping is included);
* copy   - ``np.copyto`` of every weights tensor of every mmap'd update into one preallocated model buffer:
           the bandwidth ceiling for anything that must read every byte once;
* flower - ``flwr.serverapp.strategy.FedAvg.aggregate_train`` (Flower 1.x) on reply messages whose
           ArrayRecords were built beforehand from in-memory arrays; only the aggregation call is timed.

GB/s is bytes of weight tensors read (N x 4P) per second; the table gives medians over repetitions and the
ratios of medians. Peak memory is tracemalloc's peak during one extra, untimed call, as a multiple of the
model's size. Needs flwr in the venv (bench only): ``.venv/bin/pip install -c constraints.txt flwr``.

Run: .venv/bin/python bench/aggregation.py [--quick] [--reps N] [--dir PATH]
"""

from __future__ import annotations

import argparse
import logging
import math
import mmap
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coordinator.aggregation import weighted_average
from mfcpl.wire.tensors import WEIGHTS_PREFIX, Update, encode_update, read_header, tensor_view

# Distinct update bodies written per configuration; files cycle through them (content does not change speed,
# distinct files do: each has its own page-cache pages).
DISTINCT_BODIES = 4
# Flower's inputs are kept in memory; above this many bytes of ArrayRecords the same records are reused
# across messages (which can only help Flower through caches).
FLOWER_INPUT_CAP_BYTES = 1_000_000_000


@dataclass(frozen=True)
class Config:
    clients: int
    params: int  # target parameter count


def model_shapes(target_params: int) -> dict[str, tuple[int, ...]]:
    """An encoder/fusion/head model of about ``target_params`` float32 parameters (2.875 h^2 + small)."""
    h = int(math.sqrt(target_params / 2.875)) // 8 * 8
    return {
        "encoder.0.weight": (h, h // 2), "encoder.0.bias": (h,),
        "encoder.1.weight": (h, h), "encoder.1.bias": (h,),
        "fusion.norm.weight": (h,), "fusion.norm.bias": (h,),
        "fusion.proj.weight": (h, h), "fusion.proj.bias": (h,),
        "head.weight": (h // 2, h // 2), "head.bias": (h // 2,),
        "classifier.weight": (h // 4, h // 2), "classifier.bias": (h // 4,),
    }  # fmt: skip


def write_updates(directory: Path, cfg: Config, rng: np.random.Generator) -> tuple[list[Path], dict, list[float]]:
    shapes = model_shapes(cfg.params)
    models = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
              for _ in range(min(DISTINCT_BODIES, cfg.clients))]
    samples = [float(n) for n in rng.integers(10, 500, cfg.clients)]
    paths = []
    for i in range(cfg.clients):
        body = encode_update(Update(weights=models[i % len(models)], num_samples=int(samples[i]), base_model_version=0))
        path = directory / f"update-{cfg.clients}x{cfg.params}-{i}.safetensors"
        path.write_bytes(body)
        paths.append(path)
    return paths, models, samples


def open_maps(stack: ExitStack, paths: list[Path]) -> list[mmap.mmap]:
    maps = []
    for p in paths:
        f = stack.enter_context(p.open("rb"))
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        stack.callback(m.close)
        maps.append(m)
    return maps


def copy_all(maps: list[mmap.mmap], dst: dict[str, np.ndarray]) -> None:
    for m in maps:
        header = read_header(m)
        for name, out in dst.items():
            np.copyto(out, tensor_view(m, header.tensors[WEIGHTS_PREFIX + name]))


def flower_messages(models: list[dict], samples: list[float], model_bytes: int) -> list:
    from flwr.common import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict

    distinct = len(samples) if len(samples) * model_bytes <= FLOWER_INPUT_CAP_BYTES else len(models)
    records = [ArrayRecord({k: Array(v) for k, v in models[i % len(models)].items()}) for i in range(distinct)]
    messages = []
    for i, n in enumerate(samples):
        content = RecordDict({"arrays": records[i % distinct], "metrics": MetricRecord({"num-examples": n})})
        metadata = Metadata(run_id=1, message_id=f"reply-{i}", src_node_id=i + 1, dst_node_id=0,
                            reply_to_message_id=f"ins-{i}", group_id="1", created_at=time.time(), ttl=3600.0,
                            message_type="train")
        messages.append(Message(content=content, metadata=metadata))
    return messages


def peak_traced(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bench_config(cfg: Config, directory: Path, reps: int, rng: np.random.Generator) -> dict[str, float]:
    from flwr.serverapp.strategy import FedAvg

    paths, models, samples = write_updates(directory, cfg, rng)
    shapes = {k: v.shape for k, v in models[0].items()}
    params = sum(math.prod(s) for s in shapes.values())
    model_bytes = 4 * params
    read_bytes = cfg.clients * model_bytes
    dst = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    messages = flower_messages(models, samples, model_bytes)
    strategy = FedAvg()

    def ours() -> dict[str, np.ndarray]:
        with ExitStack() as stack:
            maps = open_maps(stack, paths)
            return weighted_average(list(zip(maps, samples, strict=True)))

    def copy() -> None:
        with ExitStack() as stack:
            copy_all(open_maps(stack, paths), dst)

    def flower() -> object:
        return strategy.aggregate_train(1, messages)

    # Correctness first: both aggregations agree.
    result, (flower_arrays, _) = ours(), flower()
    for k, v in result.items():
        np.testing.assert_allclose(v, flower_arrays[k].numpy(), rtol=1e-4, atol=1e-5)
    del result, flower_arrays

    if read_bytes < 1e9:
        reps *= 3  # small configurations are cheap and the noisiest: more repetitions
    times: dict[str, list[float]] = {"ours": [], "copy": [], "flower": []}
    runners = {"ours": ours, "copy": copy, "flower": flower}
    for rep in range(reps):
        # ours and copy take turns going first (right after flower, which leaves caches and allocator cold)
        order = ["ours", "copy", "flower"] if rep % 2 == 0 else ["copy", "ours", "flower"]
        for name in order:
            t0 = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "params": params, "read_mb": read_bytes / 1e6,
        "ours_gbs": read_bytes / med["ours"] / 1e9, "copy_gbs": read_bytes / med["copy"] / 1e9,
        "flower_gbs": read_bytes / med["flower"] / 1e9,
        "vs_copy": med["copy"] / med["ours"], "vs_flower": med["flower"] / med["ours"],
        "ours_peak": peak_traced(ours) / model_bytes, "flower_peak": peak_traced(flower) / model_bytes,
        "flower_distinct": len(samples) * model_bytes <= FLOWER_INPUT_CAP_BYTES, "reps": reps,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: smaller configurations, 3 repetitions")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed repetitions per method at >= 1 GB of updates, 3x that below (default 5, quick 3)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the update files (default: a temp dir)")
    args = parser.parse_args(argv)
    try:
        import flwr
    except ImportError:
        print("flwr is not installed: .venv/bin/pip install -c constraints.txt flwr", file=sys.stderr)
        return 2
    logging.getLogger("flwr").setLevel(logging.WARNING)  # aggregate_train logs every call at INFO
    configs = [Config(10, 1_000_000), Config(100, 1_000_000), Config(10, 10_000_000)]
    if not args.quick:
        configs.append(Config(100, 10_000_000))
    reps = args.reps or (3 if args.quick else 5)
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}, flwr {flwr.__version__}, medians of {reps} repetitions ({3 * reps} below 1 GB); "
          "GB = 1e9 bytes")
    header = (f"{'updates x params':>18} {'read MB':>8} {'ours GB/s':>9} {'copy GB/s':>9} {'flwr GB/s':>9} "
              f"{'ours/copy':>9} {'ours/flwr':>9} {'peak ours':>9} {'peak flwr':>9}")
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    for cfg in configs:
        directory = Path(tempfile.mkdtemp(prefix="mfcpl-bench-agg-", dir=args.dir))
        try:
            r = bench_config(cfg, directory, reps, rng)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        note = "" if r["flower_distinct"] else f"  (flwr inputs: {DISTINCT_BODIES} records reused)"
        print(f"{cfg.clients:>6} x {r['params'] / 1e6:>7.2f}M {r['read_mb']:>8.0f} {r['ours_gbs']:>9.2f} "
              f"{r['copy_gbs']:>9.2f} {r['flower_gbs']:>9.2f} {r['vs_copy']:>9.2f} {r['vs_flower']:>9.2f} "
              f"{r['ours_peak']:>8.2f}x {r['flower_peak']:>8.2f}x{note}", flush=True)
    print(f"peak = tracemalloc peak during one call / model bytes; total {time.perf_counter() - started:.0f} s")
    print("targets: ours/copy >= 0.45, ours/flwr >= 3, peak ours O(model) (flat in the number of updates)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
