"""Local training cost of MFCPL vs FedAvg on the same UCI-HAR client, and the update size on the wire.

    .venv/bin/python bench/train_epoch.py [--windows 160] [--reps 7] [--threads 1] [--spaces]

One client = ``--windows`` training windows of one UCI-HAR subject (z-normalised per window and
channel), both modalities present. MFCPL trains with complete prototypes covering every class (all
its loss terms active); FedAvg with cross-entropy only. Same model (UCI-HAR backbone, d = 128), batch
16, 1 epoch, seeded. Reported: the median over ``--reps`` interleaved repetitions of (a) the epoch loop
alone and (b) the whole ``train_local`` call (epoch + local prototype pass + weight export), and the
ratios MFCPL / FedAvg. ``--spaces`` also prints how well each prototype space separates the classes
after a few single-client rounds (mean pairwise cosine of the shared prototypes).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from client_sdk.data import MultimodalArrays
from client_sdk.model import build_model
from client_sdk.torch_io import load_numpy_weights, model_to_numpy
from client_sdk.trainer import evaluate, train_local
from mfcpl.wire.schemas import FederationCreate
from mfcpl.wire.tensors import LocalPrototypes, PrototypeTable, Update, encode_update

NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "uci_har" / "uci_har.npz"


def znorm(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-5)).astype(np.float32)


def load_client(windows: int, subject: int, seed: int) -> MultimodalArrays:
    with np.load(NPZ) as npz:
        rows = np.flatnonzero((npz["subject"] == subject) & (npz["split"] == "train"))
        pick = np.sort(np.random.default_rng(seed).choice(rows, size=min(windows, rows.size), replace=False))
        acc, gyro, labels = npz["acc"][pick], npz["gyro"][pick], npz["label"][pick]
    n = len(pick)
    return MultimodalArrays({"acc": znorm(acc), "gyro": znorm(gyro)},
                            {"acc": np.ones(n, bool), "gyro": np.ones(n, bool)}, labels.astype(np.int64))


def config(algorithm: str, space: str = "normalized") -> FederationCreate:
    return FederationCreate.model_validate({
        "name": "bench", "algorithm": algorithm, "num_classes": 6,
        "modalities": [{"name": "acc", "kind": "timeseries", "shape": [128, 3]},
                       {"name": "gyro", "kind": "timeseries", "shape": [128, 3]}],
        "training": {"local_epochs": 1, "batch_size": 16, "options": {"prototype_space": space}},
    })


def tables(protos: dict[str, LocalPrototypes], num_classes: int = 6) -> dict[str, PrototypeTable]:
    out = {}
    for level, p in protos.items():
        vectors = np.zeros((num_classes, p.vectors.shape[1]), np.float32)
        counts = np.zeros(num_classes, np.float32)
        vectors[p.classes], counts[p.classes] = p.vectors, p.counts
        out[level] = PrototypeTable(vectors, counts)
    return out


def timing(data: MultimodalArrays, reps: int, threads: int) -> None:
    runs = {alg: config(alg) for alg in ("fedavg", "mfcpl")}
    start = model_to_numpy(build_model(runs["mfcpl"], seed=0))
    warm = build_model(runs["mfcpl"], seed=0)
    protos = tables(train_local(warm, data, runs["mfcpl"], seed=0, threads=threads).prototypes)
    epoch: dict[str, list[float]] = {a: [] for a in runs}
    total: dict[str, list[float]] = {a: [] for a in runs}
    sizes: dict[str, int] = {}
    for rep in range(reps + 1):  # the first repetition warms up and is dropped
        for alg, cfg in runs.items():
            model = build_model(cfg)
            load_numpy_weights(model, start)
            began = time.perf_counter()
            result = train_local(model, data, cfg, protos if alg == "mfcpl" else None, seed=rep, threads=threads)
            elapsed = time.perf_counter() - began
            if rep:
                epoch[alg].append(result.metrics["train_seconds"])
                total[alg].append(elapsed)
            sizes[alg] = len(encode_update(Update(result.weights, result.num_samples, 0, result.prototypes,
                                                  result.metrics)))
    print(f"client: {len(data)} windows, batch 16, 1 epoch, {threads} thread(s), median of {reps} reps")
    for name, table in (("epoch loop", epoch), ("train_local (epoch + prototypes)", total)):
        fa, mf = statistics.median(table["fedavg"]), statistics.median(table["mfcpl"])
        print(f"{name:34s} fedavg {fa * 1000:8.1f} ms  mfcpl {mf * 1000:8.1f} ms  ratio {mf / fa:5.2f}")
    n_params = sum(v.size for v in start.values())
    print(f"model: {n_params} parameters ({sum(v.nbytes for v in start.values())} bytes of float32)")
    for alg, size in sizes.items():
        print(f"update on the wire ({alg}): {size} bytes")


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    cos = unit @ unit.T
    return float(cos[~np.eye(len(cos), dtype=bool)].mean())


def spaces(data: MultimodalArrays, test: MultimodalArrays, rounds: int, threads: int) -> None:
    print(f"prototype spaces: {rounds} single-client rounds of 1 epoch on {len(data)} windows (lr 0.05)")
    for space in ("projection", "normalized", "penultimate"):
        cfg = config("mfcpl", space)
        model = build_model(cfg, seed=0)
        protos = None
        for r in range(rounds):
            result = train_local(model, data, cfg, protos, seed=r, threads=threads)
            protos = tables(result.prototypes)
        shared = result.prototypes["shared"].vectors
        m = result.metrics
        print(f"  {space:11s} mean cos(P^j, P^k) {mean_pairwise_cosine(shared):6.3f}  cmpc {m.get('train_cmpc', 0):.3f}"
              f"  cmpr {m.get('train_cmpr', 0):.4f}  cma {m.get('train_cma', 0):.4f}"
              f"  test macro-F1 {evaluate(model, test, 6)['macro_f1']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=160)
    parser.add_argument("--subject", type=int, default=1)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--spaces", action="store_true", help="also compare the prototype spaces")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    data = load_client(args.windows, args.subject, seed=0)
    timing(data, args.reps, args.threads)
    if args.spaces:
        spaces(load_client(300, args.subject, seed=1), load_test(400), args.rounds, args.threads)


def load_test(n: int) -> MultimodalArrays:
    with np.load(NPZ) as npz:
        rows = np.flatnonzero(npz["split"] == "test")
        pick = np.sort(np.random.default_rng(0).choice(rows, size=n, replace=False))
        acc, gyro, labels = npz["acc"][pick], npz["gyro"][pick], npz["label"][pick]
    return MultimodalArrays({"acc": znorm(acc), "gyro": znorm(gyro)},
                            {"acc": np.ones(n, bool), "gyro": np.ones(n, bool)}, labels.astype(np.int64))


if __name__ == "__main__":
    main()
