"""deploy/start.sh run as is, outside a container: one coordinator replica on a loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ._support import DEPLOY


@dataclass
class Replica:
    """One ``deploy/start.sh`` process (uvicorn after its exec) and its log file."""

    port: int
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Replica:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(["sh", str(DEPLOY / "start.sh")], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"start.sh exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"replica on {self.port} not ready after {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def children(self) -> list[str]:
        """Command lines of the direct children of the server process (uvicorn's workers)."""
        assert self.process is not None
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                found.append(cmdline)
        return found

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (what Docker and the kubelet send); SIGKILL if it has not exited in time."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def replica_env(database_url: str, data_dir: Path, port: int, admin_token: str, workers: int,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a container would get: MFCPL_* settings, the venv's bin first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFCPL_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({
        "MFCPL_DATABASE_URL": database_url,
        "MFCPL_DATA_DIR": str(data_dir),
        "MFCPL_BLOB_STORE": "db",
        "MFCPL_ADMIN_TOKEN": admin_token,
        "MFCPL_HOST": "127.0.0.1",
        "MFCPL_PORT": str(port),
        "MFCPL_WORKERS": str(workers),
        "MFCPL_TICK_S": "0.2",
        "MFCPL_GRACEFUL_SHUTDOWN_S": "5",
    })
    env.update(extra or {})
    return env
