"""Helpers for the node-runner tests: a SQLite coordinator, UCI-HAR slices, node subprocesses."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from client_sdk.client import MfcplClient
from tests.support.coordinator import CoordinatorProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR_ARG = "../shared/data"  # relative to the repository root, where nodes run
DATA_DIR = (REPO_ROOT / DATA_DIR_ARG).resolve()
FAST_CLIENT = {"backoff_base": 0.05, "backoff_max": 0.5, "max_retries": 3, "timeout": 30.0}

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], what: str, timeout_s: float = 60.0, interval_s: float = 0.05) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value is not None and value is not False:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@contextmanager
def sqlite_coordinator(tmp_path: Path, **kwargs: object) -> Iterator[CoordinatorProcess]:
    proc = CoordinatorProcess(f"sqlite:///{tmp_path / 'mfcpl.db'}", tmp_path / "data", tick_s=0.1, **kwargs)  # type: ignore[arg-type]
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def operator(coordinator: CoordinatorProcess) -> MfcplClient:
    return MfcplClient(coordinator.base_url, coordinator.admin_token, **FAST_CLIENT)  # type: ignore[arg-type]


def mfcpl_command() -> list[str]:
    """The installed ``mfcpl`` console script next to this interpreter, else ``python -m mfcpl``."""
    script = Path(sys.executable).with_name("mfcpl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mfcpl"]


def node_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFCPL_")}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


@dataclass
class NodeProcess:
    """One ``mfcpl client run`` subprocess; its log (stdout+stderr) goes to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"node {self.name} did not exit within {timeout_s}s:\n{self.log()[-4000:]}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def start_node(name: str, server: str, token: str, federation: str, data: str | None, log_dir: Path,
               *extra: str) -> NodeProcess:
    """A node reading ``--data data``, or (``data`` None) whatever ``extra`` says, e.g. ``--dataset``."""
    cmd = [*mfcpl_command(), "client", "run", "--server", server, "--token", token, "--federation", federation,
           *(["--data", data] if data is not None else []), "--data-dir", DATA_DIR_ARG, *extra]
    log_path = log_dir / f"node-{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=node_environment(), stdout=log, stderr=subprocess.STDOUT)
    return NodeProcess(name, process, log_path)


class HoldingProxy:
    """A TCP forwarder to ``upstream`` that holds back the first request starting with ``hold_prefix`` (bytes of
    the request line) until :meth:`release`: a real network path on which an update arrives late."""

    def __init__(self, upstream_port: int, hold_prefix: bytes) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.hold_prefix = hold_prefix
        self.held = threading.Event()
        self._gate = threading.Event()
        self._taken = False
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def release(self) -> None:
        self._gate.set()

    def close(self) -> None:
        self._gate.set()
        self._listener.close()

    def _should_hold(self, chunk: bytes) -> bool:
        with self._lock:
            if self._taken or not chunk.startswith(self.hold_prefix):
                return False
            self._taken = True
            return True

    def _accept_loop(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(downstream,), daemon=True).start()

    def _serve(self, downstream: socket.socket) -> None:
        try:
            link: dict[str, socket.socket | None] = {"up": socket.create_connection(self.upstream, timeout=60),
                                                     "holding": None}
        except OSError:
            downstream.close()
            return

        def close_all(sockets: tuple[socket.socket, ...]) -> None:
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        def down(up: socket.socket) -> None:
            try:
                while chunk := up.recv(65536):
                    downstream.sendall(chunk)
            except OSError:
                pass
            finally:
                # While a request is held (and after it is sent on a fresh connection) the server closing
                # this one must not close the client's side.
                if link["up"] is up and link["holding"] is None:
                    close_all((up, downstream))

        def upward() -> None:
            try:
                while chunk := downstream.recv(65536):
                    if self._should_hold(chunk):
                        link["holding"] = downstream
                        self.held.set()
                        self._gate.wait(120)
                        # The server may have dropped the idle keep-alive connection meanwhile: use a new one.
                        old, fresh = link["up"], socket.create_connection(self.upstream, timeout=60)
                        link["up"] = fresh
                        link["holding"] = None
                        if old is not None:
                            close_all((old,))
                        threading.Thread(target=down, args=(fresh,), daemon=True).start()
                    up = link["up"]
                    assert up is not None
                    up.sendall(chunk)
            except OSError:
                pass
            finally:
                close_all(tuple(sock for sock in (link["up"], downstream) if sock is not None))

        threading.Thread(target=upward, daemon=True).start()
        threading.Thread(target=down, args=(link["up"],), daemon=True).start()
