"""A real coordinator (``python -m mfcpl serve``) in a subprocess on a free loopback port.

Tests talk to it over HTTP exactly as clients and operators do. The process logs to a file, which is
quoted in the error when the server fails to become ready.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CoordinatorProcess:
    """One ``mfcpl serve`` process. ``start()`` returns once ``/readyz`` answers 200."""

    def __init__(
        self,
        database_url: str,
        data_dir: Path | str,
        *,
        admin_token: str | None = None,
        tick_s: float = 0.1,
        port: int | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | str | None = None,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.database_url = database_url
        self.data_dir = Path(data_dir)
        self.admin_token = admin_token or "admin-" + secrets.token_hex(16)
        self.tick_s = tick_s
        self.port = port or free_port()
        self.extra_env = dict(env or {})
        self.log_path = Path(log_path) if log_path else self.data_dir / f"coordinator-{self.port}.log"
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MFCPL_")}
        env.update(
            {
                "MFCPL_DATABASE_URL": self.database_url,
                "MFCPL_DATA_DIR": str(self.data_dir),
                "MFCPL_ADMIN_TOKEN": self.admin_token,
                "MFCPL_TICK_S": str(self.tick_s),
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> CoordinatorProcess:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("coordinator already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed in _reap
        cmd = [sys.executable, "-m", "mfcpl", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(cmd, env=self.environment(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"coordinator exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"coordinator not ready after {self.ready_timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 15.0) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run, as in a crash."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait(10)

    def restart(self) -> CoordinatorProcess:
        self.stop()
        return self.start()

    def client(self, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        """An httpx client for this server; admin token unless another is given."""
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> CoordinatorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
