"""Where one update's ingestion spends its time: wall and CPU milliseconds per stage, in-process, sequential.

Diagnostic companion of ``bench/ingest.py`` (not a ratio benchmark): a federation with N + 1 clients is
prepared over HTTP by a real coordinator (SQLite, fsync on), the server is stopped, and N updates of 4.3 MB
are ingested in this process by calling ``coordinator.updates.service.ingest`` directly, with timers wrapped
around its stages (it patches private functions of ``coordinator.updates.service``, so it follows their names
and breaks loudly when they change). CPU is this thread's CPU time; the background blob writer's CPU shows
only in the process total.

    .venv/bin/python bench/ingest_stages.py [--updates 40]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest as bench  # bench/ is not a package

WALL: dict[str, float] = defaultdict(float)
CPU: dict[str, float] = defaultdict(float)


@contextlib.contextmanager
def stage(label: str) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        WALL[label] += time.perf_counter() - wall
        CPU[label] += time.thread_time() - cpu


def timed(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with stage(label):
            return function(*args, **kwargs)

    return wrapper


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=40)
    n = parser.parse_args(argv).updates
    work = Path(tempfile.mkdtemp(prefix="mfcpl-stages-"))
    try:
        url = f"sqlite:///{work / 'coordinator' / 'mfcpl.db'}"
        token = "bench-admin-" + secrets.token_hex(8)
        server = bench.coordinator_server(work, url, token)
        server.start()
        model = bench.model_weights()
        try:
            fed = bench.prepare_federation(server.base_url, token, bench.encode_model(model), n + 1, 1, "stages")
        finally:
            server.stop()
        os.environ.update(MFCPL_STATE_DIR=str(work / "coordinator"), MFCPL_DATABASE_URL=url, MFCPL_ADMIN_TOKEN=token)
        report(fed, bench.Bodies(model).make(0, n))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(fed: bench.Federation, bodies: list[bytes]) -> None:
    from coordinator.auth import authenticate
    from coordinator.core import Services
    from coordinator.settings import Settings
    from coordinator.updates import service, validation

    services = Services.build(Settings())
    for name in ("_replay", "_check_round", "_expected_dims", "validate_update", "emit"):
        setattr(service, name, timed(name, getattr(service, name)))
    validation.first_non_finite = timed("  validate: NaN/Inf pass", validation.first_non_finite)
    plain_write = type(services.db).write

    @contextlib.contextmanager
    def write() -> Iterator[Any]:
        with stage("write txn (UPDATE, INSERT, event, commit)"), plain_write(services.db) as session:
            yield session
            began = (time.perf_counter(), time.thread_time())
        WALL["  write txn: commit"] += time.perf_counter() - began[0]
        CPU["  write txn: commit"] += time.thread_time() - began[1]

    services.db.write = write  # type: ignore[method-assign]
    begin_put = services.blobs.begin_put

    def patched_begin_put(*args: Any, **kwargs: Any) -> Any:
        pending = begin_put(*args, **kwargs)
        pending.commit = timed("blob commit (wait for write+fsync, rename, dir fsync)", pending.commit)
        return pending

    services.blobs.begin_put = patched_begin_put  # type: ignore[method-assign]
    takes_sha = "sha256" in inspect.signature(service.ingest).parameters
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for token, body in zip(fed.tokens, bodies, strict=False):
        with stage("auth (token lookup)"):
            principal = authenticate(services, token)
        with stage("body copy into one buffer"):
            buf = bytearray(body)
        with stage("sha256"):
            sha = hashlib.sha256(buf).hexdigest()
        assert principal.client_id is not None
        with stage("ingest() total"):
            if takes_sha:
                service.ingest(services, fed.id, 1, principal.client_id, buf, None, sha)
            else:
                service.ingest(services, fed.id, 1, principal.client_id, buf, None)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    count = len(bodies)
    print(f"| stage (per update, {count} sequential, {len(bodies[0]) / 1e6:.2f} MB) | wall ms | CPU ms |")
    print("|---|---|---|")
    for label in WALL:
        print(f"| {label} | {1e3 * WALL[label] / count:.2f} | {1e3 * CPU[label] / count:.2f} |")
    print(f"| loop total (CPU: whole process, all threads) | {1e3 * wall / count:.2f} | {1e3 * cpu / count:.2f} |")


if __name__ == "__main__":
    raise SystemExit(main())
