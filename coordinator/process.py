"""A server subprocess on a loopback port, ready once its health endpoint answers 200.

One helper for everything that starts a coordinator next to itself: the tests, the benchmarks, the sizing script and
the experiment runner's embedded coordinator. ``ServerProcess`` runs the coordinator as ``python -m mfcpl serve``
(``launcher="serve"``), as ``python -m uvicorn coordinator.app:create_app --factory`` (``launcher="uvicorn"``, any
other app too) or as any given command (``deploy/start.sh``), logs to a file, polls ``/readyz`` (or another URL)
until it answers 200 and stops it with SIGTERM, then SIGKILL after a bound::

    with ServerProcess(log_path=work / "coordinator.log", env=server_env({"MFCPL_STATE_DIR": str(work)})) as server:
        httpx.get(server.base_url + "/healthz")

Only the standard library and httpx: importing this module loads neither the coordinator's app nor torch.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import httpx

Launcher = Literal["serve", "uvicorn"]
COORDINATOR_APP = "coordinator.app:create_app"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the OS picks it; another process may still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_env(settings: Mapping[str, str] | None = None, *, keep_mfcpl: bool = False,
               venv_on_path: bool = False) -> dict[str, str]:
    """This process's environment for a server child, then ``settings`` on top.

    Without ``keep_mfcpl``, the caller's own ``MFCPL_*`` variables are left out, so only ``settings`` configure the
    coordinator. ``venv_on_path`` puts this interpreter's directory first on PATH (what ``deploy/start.sh`` needs to
    find ``mfcpl`` and ``uvicorn``, as in the container image).
    """
    env = {k: v for k, v in os.environ.items() if keep_mfcpl or not k.startswith("MFCPL_")}
    if venv_on_path:
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(settings or {})
    return env


class ServerExited(RuntimeError):
    """The server process exited before it answered its readiness probe."""


class ServerNotReady(TimeoutError):
    """The server process did not answer its readiness probe in time."""


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, ask for SIGTERM when the parent dies (no orphaned servers)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


class ServerProcess:
    """One server subprocess on ``host:port``. ``start()`` returns once the readiness probe answers 200.

    The command is, unless ``command`` is given:

    * ``launcher="serve"``: ``python -m mfcpl serve --host H --port P [--workers N] [--log-level L] *args``;
    * ``launcher="uvicorn"``: ``python -m uvicorn APP [--factory] --host H --port P [--workers N] [--log-level L]
      [--access-log | --no-access-log] *args`` with ``app`` (default the coordinator's factory).

    ``env=None`` inherits this process's environment (see :func:`server_env` for a cleaned one). ``port=None``
    picks a free port once, here, so a restart listens on the same one. The log file is appended to; the readiness
    probe is ``GET http://host:port{ready_path}`` unless ``ready_url`` is given (``verify`` as in httpx, for
    HTTPS). ``die_with_parent`` asks Linux to SIGTERM the server when this process dies (PR_SET_PDEATHSIG).
    """

    def __init__(
        self,
        *,
        log_path: Path | str,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        launcher: Launcher = "serve",
        app: str = COORDINATOR_APP,
        factory: bool | None = None,
        workers: int | None = None,
        log_level: str | None = None,
        access_log: bool | None = None,
        args: Sequence[str] = (),
        command: Sequence[str] | None = None,
        cwd: Path | str | None = None,
        ready_path: str = "/readyz",
        ready_url: str | None = None,
        verify: ssl.SSLContext | bool = True,
        ready_timeout_s: float = 60.0,
        poll_s: float = 0.05,
        stop_timeout_s: float = 15.0,
        die_with_parent: bool = False,
        name: str = "coordinator",
    ) -> None:
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.port = port or free_port(host)
        self.host = host
        self.launcher: Launcher = launcher
        self.app = app
        self.factory = (app == COORDINATOR_APP) if factory is None else factory
        self.workers = workers
        self.log_level = log_level
        self.access_log = access_log
        self.args = list(args)
        self.fixed_command = list(command) if command is not None else None
        self.cwd = cwd
        self.ready_path = ready_path
        self.ready_url = ready_url
        self.verify = verify
        self.ready_timeout_s = ready_timeout_s
        self.poll_s = poll_s
        self.stop_timeout_s = stop_timeout_s
        self.die_with_parent = die_with_parent
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        if self.fixed_command is not None:
            return list(self.fixed_command)
        address = ["--host", self.host, "--port", str(self.port)]
        options = ["--workers", str(self.workers)] if self.workers is not None else []
        options += ["--log-level", self.log_level] if self.log_level is not None else []
        if self.launcher == "serve":
            return [sys.executable, "-m", "mfcpl", "serve", *address, *options, *self.args]
        if self.access_log is not None:
            options.append("--access-log" if self.access_log else "--no-access-log")
        factory = ["--factory"] if self.factory else []
        return [sys.executable, "-m", "uvicorn", self.app, *factory, *address, *options, *self.args]

    def environment(self) -> dict[str, str] | None:
        """The child's environment, read at each launch (``None``: this process's)."""
        return self.env

    def launch(self) -> Self:
        """Start the process without waiting for it to become ready."""
        if self.running:
            raise RuntimeError(f"{self.name} already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.command(), env=self.environment(), cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        return self

    def is_ready(self) -> bool:
        url = self.ready_url or self.base_url + self.ready_path
        try:
            return httpx.get(url, timeout=2.0, verify=self.verify).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Poll the readiness probe; :class:`ServerExited` or :class:`ServerNotReady` (with the log) otherwise."""
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerExited(f"{self.name} exited with {self.process.returncode} before it was ready; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(self.poll_s)
        raise ServerNotReady(f"{self.name} not ready after {timeout_s}s; log {self.log_path}:\n{self.log_tail()}")

    def start(self) -> Self:
        """Launch and wait until ready; a server that does not become ready is stopped before the error."""
        self.launch()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM (a graceful stop), SIGKILL if it has not exited in time; the exit code (None: never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_timeout_s if timeout_s is None else timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run, as in a crash."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait(10)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.read_log()[-chars:] or "(empty log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
