"""What a node moves per round for the UCI-HAR model, and how long each transfer takes over loopback.

    .venv/bin/python bench/transfer.py [--reps 15] [--data-dir ../shared/data] [--shard s01_k0]

Model: ``client_sdk.model.build_model`` of the UCI-HAR federation config (``uci_har_federation`` modalities,
6 classes, default ``ModelSettings``/``TrainingConfig``, algorithm mfcpl). Sizes are the bytes on the wire:

* update: ``mfcpl.wire.tensors.encode_update`` of the weights plus *realistic* local prototypes (the MFCPL
  levels ``shared``, ``acc``, ``gyro``, computed by the model on a real UCI-HAR client shard) and the metrics a
  node reports;
* model: ``encode_model`` of the weights (the body of ``GET .../models/{v}/weights``);
* prototype set: the body of ``GET .../prototypes/{v}/tensors`` as the coordinator serves it after a round.

Times: a real coordinator subprocess (``python -m mfcpl serve``, fresh SQLite, fs blob store with fsync
on, the default) on loopback; the node side is the SDK (``MfcplClient``) with one keep-alive connection, as
``mfcpl client run`` uses it. A federation with ``reps + 1`` clients, all sampled each round; round 1 is
completed untimed (so model v1 and prototypes v1 exist); in round 2, repetition i runs, in this order,

* cold download: model metadata + weights + complete prototypes, empty ETag cache (``models.download`` and
  ``prototypes.download``, both decoded and sha256-checked);
* warm download: the same calls with the cache filled: ``If-None-Match`` answered ``304``;
* warm, HTTP only: the same three requests (metadata, then both bodies with ``If-None-Match``) without
  the SDK's sha256 check and decoding of the cached bodies;
* post: client i's ``updates.submit`` of a pre-encoded, distinct update, until the ``201`` (the coordinator
  hashes, validates every tensor, writes and fsyncs the blob and commits its row before answering).

One participant never posts, so round 2 stays open and no aggregation runs while the clock runs. Printed:
sizes, medians (and min/max) of each timing, and the ratios post / cold download and post / warm download.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from client_sdk.algorithms import LocalRound, client_algorithm
from client_sdk.cache import ETagCache, sha256_hex
from client_sdk.client import MfcplClient
from client_sdk.data.registry import load_client_data
from client_sdk.data.uci_har import CLASS_NAMES, MODALITIES
from client_sdk.model import build_model
from client_sdk.node import client_profile
from client_sdk.torch_io import model_to_numpy
from coordinator.process import ServerProcess, server_env
from mfcpl.wire.schemas import Algorithm, ClientProfile, FederationCreate, TaskAction
from mfcpl.wire.tensors import Update, encode_model, encode_update

REPO = Path(__file__).resolve().parents[1]


def uci_har_config(clients: int) -> FederationCreate:
    return FederationCreate(
        name="bench-transfer", algorithm=Algorithm.MFCPL, num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES,
        modalities=MODALITIES, rounds=1000, clients_per_round=clients, round_deadline_s=3600, lease_s=3600, seed=1,
    )


@contextmanager
def coordinator(workdir: Path) -> Iterator[tuple[str, str]]:
    """A ``python -m mfcpl serve`` subprocess on a fresh SQLite file; yields (base URL, admin token)."""
    token = "admin-" + secrets.token_hex(16)
    env = server_env({"MFCPL_STATE_DIR": str(workdir), "MFCPL_ADMIN_TOKEN": token, "MFCPL_TICK_S": "0.1"})
    with ServerProcess(log_path=workdir / "coordinator.log", env=env, log_level="warning", cwd=REPO) as server:
        yield server.base_url, token


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def summary(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"{name:<34} median {statistics.median(ms):8.2f} ms   (min {min(ms):7.2f}, max {max(ms):8.2f}, n={len(ms)})"


def measure(url: str, token: str, config: FederationCreate, weights: dict[str, np.ndarray],
            update_body: Callable[[int, int], bytes], profile: ClientProfile,
            reps: int) -> dict[str, list[float]]:
    """Round 1 untimed, then ``reps`` interleaved (cold download, warm download, post) in round 2."""
    with MfcplClient(url, token, timeout=120) as admin:
        fid = admin.federations.create(config).id
        admin.models.upload_initial(fid, weights)
        nodes = [MfcplClient(url, admin.clients.enroll(fid, f"node-{i}").token, timeout=120)
                 for i in range(reps + 1)]
        try:
            for node in nodes:  # a profile with modalities and a poll: every node is live and sampled
                node.clients.report_profile(fid, profile)
                node.tasks.next(fid)
            wait = time.monotonic() + 60
            while any(node.tasks.next(fid).action != TaskAction.TRAIN for node in nodes):
                if time.monotonic() > wait:
                    raise RuntimeError("round 1 did not open for every node")
                time.sleep(0.1)
            for i, node in enumerate(nodes):  # round 1, untimed: gives model v1 and prototypes v1
                node.updates.submit(fid, 1, update_body(0, i))
            while admin.federations.get(fid).latest_model_version != 1:
                time.sleep(0.05)
            while nodes[0].tasks.next(fid).round != 2:
                time.sleep(0.05)
            proto_bytes = len(admin.prototypes.get(fid, 1).model_dump_json())  # JSON summary, for reference
            reader = nodes[-1]  # the participant that never posts in round 2 downloads
            set_body = reader.download_blob(f"/v1/federations/{fid}/prototypes/1/tensors")
            print(f"  complete prototype set on the wire        {len(set_body):>12,} bytes  "
                  f"(JSON summary {proto_bytes:,} bytes)")

            def download() -> None:
                reader.models.download(fid, 1)
                reader.prototypes.download(fid, 1)

            meta = reader.models.get(fid, 1)
            base = f"/v1/federations/{fid}"
            revalidate = [(f"{base}/models/1", {}),
                          (f"{base}/models/1/weights", {"If-None-Match": f'"{meta.sha256}"'}),
                          (f"{base}/prototypes/1/tensors", {"If-None-Match": f'"{sha256_hex(set_body)}"'})]

            def revalidate_http_only() -> None:
                for path, headers in revalidate:
                    assert reader.request("GET", path, headers=headers).status_code in (200, 304)

            bodies = [update_body(1, i) for i in range(reps)]
            times: dict[str, list[float]] = {"cold": [], "warm": [], "warm_http": [], "post": []}
            for i in range(reps):
                reader.cache = ETagCache()
                times["cold"].append(timed(download))
                times["warm"].append(timed(download))
                assert reader.cache.not_modified == 2, "the warm download should be two 304s"
                times["warm_http"].append(timed(revalidate_http_only))
                times["post"].append(timed(lambda i=i: nodes[i].updates.submit(fid, 2, bodies[i])))
        finally:
            for node in nodes:
                node.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--shard", default="s01_k0", help="UCI-HAR client whose data gives the local prototypes")
    args = parser.parse_args()

    config = uci_har_config(args.reps + 1)
    model = build_model(config, seed=0)
    weights = model_to_numpy(model)
    data = load_client_data(f"uci_har:{args.shard}", data_dir=args.data_dir).data
    prototypes = client_algorithm(Algorithm.MFCPL)(LocalRound(model, config, {}, None)).local_prototypes(data)
    metrics = {"train_loss": 4.2, "train_ce": 1.7, "train_accuracy": 0.3, "train_seconds": 3.1,
               "num_complete": float(len(data)), "local_eval_accuracy": 0.2, "local_eval_macro_f1": 0.1}
    params = sum(int(v.size) for v in weights.values())
    model_bytes = len(encode_model(weights))

    def update_body(base_version: int, client: int) -> bytes:
        distinct = dict(weights)
        first = next(iter(distinct))
        distinct[first] = weights[first].copy()
        distinct[first].flat[0] += np.float32(1e-3 * (client + 1))
        return encode_update(Update(distinct, len(data), base_version, prototypes, metrics))

    update_bytes = len(update_body(0, 0))
    print(f"UCI-HAR model (mfcpl, default settings): {params:,} float32 parameters in {len(weights)} tensors")
    print(f"  model on the wire (encode_model)          {model_bytes:>12,} bytes")
    print(f"  update on the wire (encode_update)        {update_bytes:>12,} bytes  (local prototypes: "
          + ", ".join(f"{k} {p.vectors.shape[0]}x{p.vectors.shape[1]}" for k, p in prototypes.items())
          + f"; update / model {update_bytes / model_bytes:.4f})")

    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp, coordinator(Path(tmp)) as (url, token):
        times = measure(url, token, config, weights, update_body, client_profile(data, 6), args.reps)
    print(f"\nloopback, {args.reps} repetitions (interleaved cold / warm / warm HTTP only / post):")
    print(summary("download model + prototypes, cold", times["cold"]))
    print(summary("download model + prototypes, 304", times["warm"]))
    print(summary("  the same 3 requests, HTTP only", times["warm_http"]))
    print(summary("post update (201, durable)", times["post"]))
    c, w, p = (statistics.median(times[k]) for k in ("cold", "warm", "post"))
    print(f"ratios: post / cold download {p / c:.2f}x; post / warm download {p / w:.2f}x; "
          f"cold / warm download {c / w:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
