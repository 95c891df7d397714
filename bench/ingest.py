"""Update ingestion over loopback: the real coordinator against a bare FastAPI endpoint, same uvicorn settings.

Both servers run as subprocesses started the same way (``python -m uvicorn ... --http httptools --workers 1
--log-level warning --no-access-log``):

* **coordinator**: ``coordinator.app:create_app --factory`` on a fresh SQLite file (``--postgres``: a fresh
  database at 127.0.0.1:5432), fs blob store with fsync on (the default): each accepted update is hashed
  (sha256), validated (header, shapes, dtypes, prototypes, a NaN/Inf pass over every float), written and
  fsynced, and its row committed before the 201.
* **bare**: ``bench/bare_app.py``, one POST endpoint that reads the body and returns its length.

Per concurrency level ``c``, one federation is prepared (model of about 1M float32 parameters, so updates
are about 4.3 MB with their prototypes; N + 1 enrolled clients, all participants of every round; a one-hour
deadline) before the clock starts. Each
repetition is one round: N pre-encoded, distinct, valid updates (``mfcpl.wire.tensors.encode_update``; one
float differs per body, so no two share a blob) are posted by ``c`` threads, each with its own keep-alive
httpx client, to the coordinator and to the bare endpoint (the order alternates between repetitions). The
round is still open then (one participant has not reported), so no aggregation runs while the clock runs;
afterwards the last participant's update closes it (not timed) and the next repetition uses the next round.
Reported: updates/s and MB/s (10^6 bytes), medians over repetitions, and
the ratio coordinator/bare; also the CPU milliseconds per update of each server process and of this load
generator (which shares the machine's cores with the servers).

    .venv/bin/python bench/ingest.py                 # 1, 8, 32 clients, 5 repetitions, SQLite
    .venv/bin/python bench/ingest.py --postgres      # the same against a fresh Postgres database
    .venv/bin/python bench/ingest.py --quick         # 2 repetitions
    .venv/bin/python bench/ingest.py --server-env MFCPL_FSYNC=false   # control: no fsync (unsafe, measuring only)
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from coordinator.process import ServerProcess, server_env
from mfcpl.wire.constants import SAFETENSORS_CONTENT_TYPE
from mfcpl.wire.tensors import WEIGHTS_PREFIX, LocalPrototypes, Update, encode_model, encode_update, read_header

REPO = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
NUM_CLASSES = 6
PROTO_DIM = 128
# About 1.07M float32 parameters (4.27 MB), shaped like encoder / fusion / head layers.
MODEL_TENSORS: dict[str, tuple[int, ...]] = {
    "encoder.weight": (1024, 512), "encoder.bias": (1024,),
    "fusion.weight": (512, 768), "fusion.bias": (512,),
    "proj.weight": (128, 768), "proj.bias": (128,),
    "head.weight": (64, 768), "head.bias": (64,),
}
SAFETENSORS_HEADERS = {"Content-Type": SAFETENSORS_CONTENT_TYPE}
# Both servers: python -m uvicorn APP --host 127.0.0.1 --http httptools --workers N --log-level warning --no-access-log
UVICORN_OPTIONS: dict[str, Any] = {"launcher": "uvicorn", "log_level": "warning", "access_log": False}
HTTP_IMPL = ["--http", "httptools"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------ bodies


def model_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (0.02 * rng.standard_normal(shape)).astype(np.float32) for name, shape in MODEL_TENSORS.items()}


def update_template(model: dict[str, np.ndarray], base_version: int) -> tuple[bytes, int]:
    """A valid update body (weights, shared and per-modality prototypes, metrics) and the byte offset of one
    weight float that :func:`distinct_bodies` overwrites."""
    rng = np.random.default_rng(1)
    weights = {k: v + np.float32(0.001) for k, v in model.items()}
    prototypes = {
        level: LocalPrototypes(classes=np.arange(NUM_CLASSES, dtype=np.int64),
                               vectors=rng.standard_normal((NUM_CLASSES, PROTO_DIM)).astype(np.float32),
                               counts=np.full(NUM_CLASSES, 10.0, dtype=np.float32))
        for level in ("shared", "acc", "gyro")
    }
    body = encode_update(Update(weights=weights, num_samples=60, base_model_version=base_version, prototypes=prototypes,
                                metrics={"train_loss": 0.5, "train_accuracy": 0.8}))
    first = read_header(body).tensors[WEIGHTS_PREFIX + "encoder.weight"]
    return body, first.start


def distinct_bodies(template: bytes, offset: int, count: int, first_value: int) -> list[bytes]:
    """``count`` copies of the template, each with a different finite float32 at ``offset``."""
    bodies = []
    for i in range(count):
        buf = bytearray(template)
        buf[offset:offset + 4] = np.float32(first_value + i).tobytes()
        bodies.append(bytes(buf))
    return bodies


# ------------------------------------------------------------------------------------------------ servers


class Server(ServerProcess):
    """One uvicorn subprocess; ``cpu_seconds`` reads its user+system time from /proc."""

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process and of its worker processes (``--workers`` > 1)."""
        total = 0
        for stat_path in Path("/proc").glob("[0-9]*/stat"):
            try:
                stat = stat_path.read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(stat_path.parent.name) == self.pid or int(fields[1]) == self.pid:  # ppid
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / CLK_TCK


def coordinator_server(work: Path, database_url: str, admin_token: str, source: Path = REPO,
                       extra_env: dict[str, str] | None = None, workers: int = 1) -> Server:
    env = server_env({"MFCPL_STATE_DIR": str(work / "coordinator"), "MFCPL_DATABASE_URL": database_url,
                      "MFCPL_ADMIN_TOKEN": admin_token} | (extra_env or {}))
    # cwd: ``python -m uvicorn`` imports the coordinator package from ``source`` (--coordinator-src)
    return Server(log_path=work / "coordinator.log", env=env, args=HTTP_IMPL, workers=workers, cwd=source,
                  **UVICORN_OPTIONS)


def bare_server(work: Path, workers: int = 1) -> Server:
    return Server(log_path=work / "bare.log", env=server_env(), app="bare_app:app",
                  args=["--app-dir", str(REPO / "bench"), *HTTP_IMPL], workers=workers, cwd=REPO,
                  ready_path="/healthz", name="bare", **UVICORN_OPTIONS)


@contextmanager
def postgres_database() -> Iterator[str]:
    import psycopg

    name = f"mfcpl_bench_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL.format(name=name)
    finally:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------------------------------------ federations


@dataclass(frozen=True)
class Federation:
    """A federation whose every enrolled client is a participant of each round."""

    id: str
    tokens: list[str]


def federation_config(name: str, participants: int, rounds: int) -> dict[str, Any]:
    return {
        "name": name, "algorithm": "mfcpl", "num_classes": NUM_CLASSES,
        "modalities": [{"name": "acc", "kind": "timeseries", "shape": [128, 3]},
                       {"name": "gyro", "kind": "timeseries", "shape": [128, 3]}],
        "rounds": rounds, "clients_per_round": participants, "min_clients": participants,
        "round_deadline_s": 3600, "lease_s": 3600, "seed": 1,
    }


def enroll(http: httpx.Client, admin_token: str, fid: str, name: str) -> str:
    enrolled = http.post(f"/v1/federations/{fid}/clients", json={"name": name},
                         headers={"Authorization": f"Bearer {admin_token}"})
    enrolled.raise_for_status()
    token = enrolled.json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    profile = {"modalities": ["acc", "gyro"], "class_counts": [10] * NUM_CLASSES, "num_samples": 10 * NUM_CLASSES}
    http.put(f"/v1/federations/{fid}/clients/me/profile", json=profile, headers=auth).raise_for_status()
    http.get(f"/v1/federations/{fid}/tasks/next", headers=auth).raise_for_status()  # starts the lease
    return token


def wait_round_open(http: httpx.Client, fid: str, number: int, participants: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = http.get(f"/v1/federations/{fid}/rounds/{number}")
        if response.status_code == 200 and response.json()["state"] == "open":
            if len(response.json()["participants"]) != participants:
                raise RuntimeError(f"round {number} of {fid} has {len(response.json()['participants'])} participants")
            return
        time.sleep(0.05)
    raise TimeoutError(f"round {number} of federation {fid} did not open")


def prepare_federation(base_url: str, admin_token: str, model_body: bytes, participants: int, rounds: int,
                       label: str) -> Federation:
    admin = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=base_url, headers=admin, timeout=60) as http:
        created = http.post("/v1/federations", json=federation_config(label, participants, rounds))
        created.raise_for_status()
        fid = created.json()["id"]
        http.post(f"/v1/federations/{fid}/models", content=model_body,
                  headers=SAFETENSORS_HEADERS).raise_for_status()
        with httpx.Client(base_url=base_url, timeout=60) as shared, ThreadPoolExecutor(4) as pool:
            tokens = list(pool.map(lambda i: enroll(shared, admin_token, fid, f"{label}-c{i:04d}"),
                                   range(participants)))
        wait_round_open(http, fid, 1, participants)
    return Federation(fid, tokens)


# ------------------------------------------------------------------------------------------------ load


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Sample:
    seconds: float
    updates: int
    body_bytes: int
    server_cpu_s: float
    client_cpu_s: float

    @property
    def updates_per_s(self) -> float:
        return self.updates / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.body_bytes / self.seconds / 1e6


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_load(server: Server, requests: Sequence[Request], concurrency: int, expected_status: int,
             on_response: Callable[[httpx.Response], None] | None = None) -> Sample:
    """Post every request once, from ``concurrency`` threads with one keep-alive connection each."""
    shares = [list(requests[i::concurrency]) for i in range(concurrency)]
    clients = [httpx.Client(base_url=server.base_url, timeout=120) for _ in range(concurrency)]
    for client in clients:  # open every connection before the clock starts
        client.get(server.ready_path).raise_for_status()
    start = threading.Barrier(concurrency + 1)
    errors: list[str] = []

    def worker(client: httpx.Client, share: list[Request]) -> None:
        start.wait()
        for request in share:
            response = client.post(request.path, content=request.body, headers=request.headers)
            if response.status_code != expected_status:
                errors.append(f"{server.name} {request.path}: {response.status_code} {response.text[:300]}")
                return
            if on_response is not None:
                on_response(response)

    threads = [threading.Thread(target=worker, args=(c, s)) for c, s in zip(clients, shares, strict=True)]
    for thread in threads:
        thread.start()
    server_cpu, client_cpu = server.cpu_seconds(), process_cpu_seconds()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    server_cpu, client_cpu = server.cpu_seconds() - server_cpu, process_cpu_seconds() - client_cpu
    for client in clients:
        client.close()
    if errors:
        raise RuntimeError(errors[0])
    return Sample(seconds, len(requests), sum(len(r.body) for r in requests), server_cpu, client_cpu)


# ------------------------------------------------------------------------------------------------ report


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def summarize(concurrency: int, bare: list[Sample], ours: list[Sample]) -> dict[str, float]:
    row = {"clients": concurrency, "updates": ours[0].updates,
           "bare_ups": median([s.updates_per_s for s in bare]), "ours_ups": median([s.updates_per_s for s in ours]),
           "bare_mbs": median([s.mb_per_s for s in bare]), "ours_mbs": median([s.mb_per_s for s in ours]),
           "bare_cpu_ms": median([1e3 * s.server_cpu_s / s.updates for s in bare]),
           "ours_cpu_ms": median([1e3 * s.server_cpu_s / s.updates for s in ours]),
           "gen_cpu_ms": median([1e3 * s.client_cpu_s / s.updates for s in bare + ours])}
    row["ratio"] = row["ours_ups"] / row["bare_ups"]
    row["ratio_min"] = min(o.updates_per_s / b.updates_per_s for o, b in zip(ours, bare, strict=True))
    row["ratio_max"] = max(o.updates_per_s / b.updates_per_s for o, b in zip(ours, bare, strict=True))
    return row


def print_table(rows: list[dict[str, float]]) -> None:
    print("\n| clients | updates/rep | bare upd/s | ours upd/s | bare MB/s | ours MB/s | ours/bare (min-max) "
          "| server CPU ms/upd bare | ours | load-gen CPU ms/upd |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['updates']} | {r['bare_ups']:.1f} | {r['ours_ups']:.1f} | {r['bare_mbs']:.0f} "
              f"| {r['ours_mbs']:.0f} | {r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) "
              f"| {r['bare_cpu_ms']:.1f} | {r['ours_cpu_ms']:.1f} | {r['gen_cpu_ms']:.1f} |")


# ------------------------------------------------------------------------------------------------ main


def updates_per_measurement(concurrency: int, at_least: int) -> int:
    return concurrency * math.ceil(at_least / concurrency)


def prepare_all(server: Server, admin_token: str, model_body: bytes, levels: Sequence[int], reps: int,
                at_least: int) -> dict[int, Federation]:
    """Per concurrency level, one federation with one participant more than the updates of a measurement
    and one round per repetition; plus a small one for warm-up (level 0)."""
    plan = {0: prepare_federation(server.base_url, admin_token, model_body, 5, 1, "warmup")}
    for concurrency in levels:
        n = updates_per_measurement(concurrency, at_least)
        plan[concurrency] = prepare_federation(server.base_url, admin_token, model_body, n + 1, reps,
                                               f"c{concurrency}")
    return plan


class Bodies:
    """Distinct valid update bodies for a round's input model version (one float differs per body)."""

    def __init__(self, model: dict[str, np.ndarray]) -> None:
        self.model = model
        self.templates: dict[int, tuple[bytes, int]] = {}
        self.counter = 0

    def make(self, base_version: int, count: int) -> list[bytes]:
        if base_version not in self.templates:
            self.templates[base_version] = update_template(self.model, base_version)
        template, offset = self.templates[base_version]
        self.counter += count
        return distinct_bodies(template, offset, count, first_value=self.counter - count + 1)


def update_requests(fid: str, number: int, tokens: Sequence[str], bodies: Sequence[bytes]) -> list[Request]:
    return [Request(f"/v1/federations/{fid}/rounds/{number}/updates",
                    SAFETENSORS_HEADERS | {"Authorization": f"Bearer {token}"}, body)
            for token, body in zip(tokens, bodies, strict=True)]


class Measurer:
    """Posts the same bodies to the coordinator and to the bare endpoint, then completes the round (the last
    participant's update, not timed), waits for the next round and deletes the round's update blobs."""

    def __init__(self, ours: Server, bare: Server, admin_token: str, blob_root: Path) -> None:
        self.ours, self.bare, self.blob_root = ours, bare, blob_root
        self.admin = httpx.Client(base_url=ours.base_url, headers={"Authorization": f"Bearer {admin_token}"},
                                  timeout=120)

    def round(self, fed: Federation, number: int, bodies: Bodies, concurrency: int,
              bare_first: bool) -> tuple[Sample, Sample]:
        measured = bodies.make(number - 1, len(fed.tokens))  # round r starts from model version r - 1
        ours_requests = update_requests(fed.id, number, fed.tokens, measured)
        last = ours_requests.pop()
        bare_requests = [Request("/upload", r.headers, r.body) for r in ours_requests]

        def ours() -> Sample:
            return run_load(self.ours, ours_requests, concurrency, 201)

        def bare() -> Sample:
            return run_load(self.bare, bare_requests, concurrency, 200)

        if bare_first:
            bare_sample = bare()
            ours_sample = ours()
        else:
            ours_sample = ours()
            bare_sample = bare()
        self.complete_round(fed, number, last)
        return bare_sample, ours_sample

    def complete_round(self, fed: Federation, number: int, last: Request) -> None:
        response = self.admin.post(last.path, content=last.body, headers=last.headers)
        if response.status_code != 201:
            raise RuntimeError(f"last update of round {number}: {response.status_code} {response.text[:300]}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = self.admin.get(f"/v1/federations/{fed.id}/rounds/{number}").json()["state"]
            if state in ("closed", "failed"):
                break
            time.sleep(0.05)
        if state != "closed":
            raise RuntimeError(f"round {number} of {fed.id} is {state}")
        for receipt in self.admin.get(f"/v1/federations/{fed.id}/rounds/{number}/updates").json():
            sha = receipt["sha256"]
            (self.blob_root / sha[:2] / sha).unlink(missing_ok=True)  # keep the disk footprint to one round
        federation = self.admin.get(f"/v1/federations/{fed.id}").json()
        if federation["status"] != "completed":
            wait_round_open(self.admin, fed.id, number + 1, len(fed.tokens))

    def close(self) -> None:
        self.admin.close()


@contextmanager
def py_spy(pid: int, out: Path | None) -> Iterator[None]:
    """``py-spy record`` of the coordinator process while the block runs (``--profile``)."""
    if out is None:
        yield
        return
    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--rate",
                            "200", "--threads", "--format", "raw", "-o", str(out)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.STDOUT)
    time.sleep(1.0)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
        print(f"py-spy profile of the coordinator (raw collapsed stacks): {out}")


def benchmark(args: argparse.Namespace, work: Path, database_url: str) -> list[dict[str, float]]:
    admin_token = "bench-admin-" + secrets.token_hex(8)
    ours_server = coordinator_server(work, database_url, admin_token, args.coordinator_src, args.server_env,
                                     args.workers)
    bare = bare_server(work, args.workers)
    model = model_weights()
    bodies = Bodies(model)
    size = len(bodies.make(0, 1)[0])
    print(f"update body {size / 1e6:.2f} MB ({sum(v.size for v in model.values()) / 1e6:.2f}M float32 "
          f"parameters + prototypes); load average {os.getloadavg()[0]:.1f} at start; {os.cpu_count()} CPUs")
    measurer: Measurer | None = None
    try:
        t0 = time.perf_counter()
        ours_server.launch()
        bare.launch()
        ours_server.wait_ready()
        bare.wait_ready()
        plan = prepare_all(ours_server, admin_token, encode_model(model), args.clients, args.reps, args.updates)
        print(f"{len(plan)} federations, {sum(len(f.tokens) for f in plan.values())} clients prepared in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        measurer = Measurer(ours_server, bare, admin_token, work / "coordinator" / "blobs")
        measurer.round(plan[0], 1, bodies, 2, bare_first=True)  # warm-up, not reported
        rows = []
        assert ours_server.process is not None
        with py_spy(ours_server.process.pid, args.profile):
            for concurrency in args.clients:
                bare_samples, ours_samples = [], []
                for rep in range(args.reps):
                    bare_sample, ours_sample = measurer.round(plan[concurrency], rep + 1, bodies, concurrency,
                                                              bare_first=rep % 2 == 0)
                    bare_samples.append(bare_sample)
                    ours_samples.append(ours_sample)
                    print(f"  {concurrency:>2} clients rep {rep + 1}: bare {bare_sample.updates_per_s:6.1f} upd/s, "
                          f"ours {ours_sample.updates_per_s:6.1f} upd/s, "
                          f"ratio {ours_sample.updates_per_s / bare_sample.updates_per_s:.2f}", flush=True)
                rows.append(summarize(concurrency, bare_samples, ours_samples))
        return rows
    finally:
        if measurer is not None:
            measurer.close()
        ours_server.stop()
        bare.stop()


def env_assignment(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32],
                        help="concurrency levels, comma-separated (default 1,8,32)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per level (default 5)")
    parser.add_argument("--updates", type=int, default=48,
                        help="updates per measurement, rounded up to a multiple of the concurrency (default 48)")
    parser.add_argument("--postgres", action="store_true", help="coordinator on a fresh Postgres database")
    parser.add_argument("--quick", action="store_true", help="2 repetitions")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, database)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="record the coordinator with py-spy during the measurements (raw collapsed stacks)")
    parser.add_argument("--coordinator-src", type=Path, default=REPO,
                        help="run the coordinator package from this source tree (e.g. an exported older commit), "
                        "to compare versions; default: this checkout")
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn worker processes of both servers (default 1); CPU is summed over them")
    parser.add_argument("--server-env", type=env_assignment, action="append", default=[], metavar="KEY=VALUE",
                        help="set an environment variable for the coordinator subprocess (repeatable), e.g. "
                        "MFCPL_FSYNC=false as a control (unsafe: for measuring only)")
    args = parser.parse_args(argv)
    args.server_env = dict(args.server_env)
    if args.quick:
        args.reps = 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="mfcpl-ingest-"))
    try:
        if args.postgres:
            with postgres_database() as url:
                rows = benchmark(args, work, url)
            backend = "Postgres"
        else:
            rows = benchmark(args, work, f"sqlite:///{work / 'coordinator' / 'mfcpl.db'}")
            backend = "SQLite"
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    fsync = args.server_env.get("MFCPL_FSYNC", "true")
    extra = ", ".join(f"{k}={v}" for k, v in args.server_env.items())
    print(f"\ncoordinator on {backend}, {'server env ' + extra if extra else 'fsync on'} (MFCPL_FSYNC={fsync}); "
          f"medians of {args.reps} repetitions; MB = 10^6 bytes")
    print_table(rows)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; total {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
