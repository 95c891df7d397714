"""Measure what one coordinator replica needs: resident memory (idle and peak) and database growth per round.

Runs deploy/start.sh (one worker, MFCPL_BLOB_STORE=db or fs) against a scratch database on a local Postgres, drives one
FedAvg round per configuration with synthetic float32 models over plain HTTP, and prints a table. Each
configuration gets a fresh replica, so the peak (VmHWM) belongs to that configuration alone.

    .venv/bin/python deploy/sizing.py --pg postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import secrets
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg

from coordinator.process import ServerProcess, free_port, server_env
from mfcpl.wire.constants import SAFETENSORS_CONTENT_TYPE
from mfcpl.wire.tensors import Update, encode_model, encode_update

DEPLOY = Path(__file__).resolve().parent


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakSampler(threading.Thread):
    """Samples RssAnon (heap: what a memory limit must cover) every 10 ms; VmHWM also counts mapped file pages."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_anon_kib, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak_anon_kib = max(self.peak_anon_kib, proc_kib(self.pid, "RssAnon"))
            except (OSError, KeyError):
                return
            time.sleep(0.01)


def measure(admin_dsn: str, params: int, clients: int, workdir: Path, blob_store: str) -> dict[str, float]:
    name = f"mfcpl_sizing_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    info = psycopg.conninfo.conninfo_to_dict(db_dsn)
    host, user = info.get("host", "127.0.0.1"), info.get("user", "postgres")
    url = f"postgresql+psycopg://{user}@{host}:{info.get('port', 5432)}/{name}"
    port, token = free_port(), secrets.token_hex(16)
    env = server_env({"MFCPL_DATABASE_URL": url, "MFCPL_STATE_DIR": str(workdir / name), "MFCPL_BLOB_STORE": blob_store,
                      "MFCPL_ADMIN_TOKEN": token, "MFCPL_HOST": "127.0.0.1", "MFCPL_PORT": str(port),
                      "MFCPL_WORKERS": "1", "MFCPL_TICK_S": "0.2"}, venv_on_path=True)
    server = ServerProcess(command=["sh", str(DEPLOY / "start.sh")], port=port, env=env,
                           log_path=workdir / f"{name}.log", poll_s=0.1, stop_timeout_s=60.0, name="replica")
    base = server.base_url
    try:
        server.start()
        idle_kib = proc_kib(server.pid, "VmRSS")
        sampler = PeakSampler(server.pid)
        sampler.start()
        with psycopg.connect(db_dsn) as conn:
            db_before = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=300)
        fed = admin.post("/v1/federations", json={
            "name": "sizing", "algorithm": "fedavg", "num_classes": 6, "rounds": 1, "clients_per_round": clients,
            "modalities": [{"name": "x", "kind": "vector", "shape": [4]}], "round_deadline_s": 600}).json()
        fid = fed["id"]
        weights = {"w": np.zeros(params, np.float32)}
        model_body = encode_model(weights)
        assert admin.post(f"/v1/federations/{fid}/models", content=model_body,
                          headers={"Content-Type": SAFETENSORS_CONTENT_TYPE}).status_code == 201
        nodes = []
        for i in range(clients):
            tok = admin.post(f"/v1/federations/{fid}/clients", json={"name": f"n{i}"}).json()["token"]
            node = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tok}"}, timeout=300)
            node.put(f"/v1/federations/{fid}/clients/me/profile",
                     json={"modalities": ["x"], "class_counts": [1, 0, 0, 0, 0, 0], "num_samples": 1})
            nodes.append(node)
        tasks: dict[int, dict] = {}
        while len(tasks) < clients:
            for i, node in enumerate(nodes):
                task = node.get(f"/v1/federations/{fid}/tasks/next").json()
                if task["action"] == "train":
                    tasks[i] = task
            time.sleep(0.1)
        rng = np.random.default_rng(0)
        update_bytes = 0
        for i, node in enumerate(nodes):
            body = encode_update(Update({"w": rng.standard_normal(params, dtype=np.float32)}, 10 + i, 0))
            update_bytes = len(body)
            posted = node.post(f"/v1/federations/{fid}/rounds/{tasks[i]['round']}/updates", content=body,
                               headers={"Content-Type": SAFETENSORS_CONTENT_TYPE})
            assert posted.status_code == 201, posted.text
        while admin.get(f"/v1/federations/{fid}/rounds/{tasks[0]['round']}").json()["state"] != "closed":
            time.sleep(0.2)
        peak_kib = proc_kib(server.pid, "VmHWM")
        sampler.stop.set()
        sampler.join()
        with psycopg.connect(db_dsn) as conn:
            db_after = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        return {"params": params, "clients": clients, "model_mb": len(model_body) / 1e6,
                "update_mb": update_bytes / 1e6, "idle_rss_mb": idle_kib / 1024, "peak_rss_mb": peak_kib / 1024,
                "peak_anon_mb": sampler.peak_anon_kib / 1024,
                "db_growth_mb": (db_after - db_before) / 1e6}
    finally:
        server.stop()
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test", help="admin DSN")
    parser.add_argument("--configs", default="602444x10,6000000x10,25000000x4",
                        help="comma-separated PARAMSxCLIENTS (602444 = the UCI-HAR MFCPL model)")
    parser.add_argument("--blob-store", choices=["db", "fs"], default="db")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mfcpl-sizing"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"blob store: {args.blob_store}")
    print("| params | clients | model MB | update MB | idle RSS MiB | peak RSS MiB | peak anon MiB "
          "| DB growth MB per round |")
    print("|---|---|---|---|---|---|---|---|")
    for config in args.configs.split(","):
        params, clients = (int(x) for x in config.split("x"))
        r = measure(args.pg, params, clients, args.workdir, args.blob_store)
        print(f"| {r['params']:,} | {r['clients']} | {r['model_mb']:.1f} | {r['update_mb']:.1f} | "
              f"{r['idle_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['peak_anon_mb']:.0f} | "
              f"{r['db_growth_mb']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
