"""An embedded coordinator: a real uvicorn server on loopback, SQLite in the run's directory."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, ask for SIGTERM when the parent dies (no orphaned servers)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedCoordinator:
    """``with EmbeddedCoordinator(dir) as c: c.base_url, c.admin_token`` - a coordinator subprocess.

    It runs ``uvicorn coordinator.app:create_app --factory`` with its database (SQLite) and blobs under
    ``state_dir``; the log goes to ``state_dir/coordinator.log``. ``tick_s`` is the round timer period.
    """

    def __init__(self, state_dir: str | os.PathLike[str], *, tick_s: float = 0.05, startup_timeout_s: float = 60.0,
                 extra_env: dict[str, str] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.tick_s = tick_s
        self.startup_timeout_s = startup_timeout_s
        self.extra_env = extra_env or {}
        self.admin_token = secrets.token_urlsafe(24)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedCoordinator:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = {
            **os.environ,
            "MFCPL_DATA_DIR": str(self.state_dir),
            "MFCPL_DATABASE_URL": f"sqlite:///{(self.state_dir / 'coordinator.db').resolve()}",
            "MFCPL_ADMIN_TOKEN": self.admin_token,
            "MFCPL_TICK_S": str(self.tick_s),
            **self.extra_env,
        }
        log = open(self.state_dir / "coordinator.log", "ab")  # noqa: SIM115 - owned by the subprocess
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "coordinator.app:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", "--no-access-log"],
            env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the coordinator exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the coordinator did not become ready in {self.startup_timeout_s}s; see {self.log_path}")

    @property
    def log_path(self) -> Path:
        return self.state_dir / "coordinator.log"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedCoordinator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
