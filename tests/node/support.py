"""Helpers for the node-runner tests: a SQLite coordinator, UCI-HAR slices, node subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
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
    """The installed ``mfcpl`` console script next to this interpreter, else ``python -m coordinator``."""
    script = Path(sys.executable).with_name("mfcpl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "coordinator"]


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


def start_node(name: str, server: str, token: str, federation: str, data: str, log_dir: Path,
               *extra: str) -> NodeProcess:
    cmd = [*mfcpl_command(), "client", "run", "--server", server, "--token", token, "--federation", federation,
           "--data", data, "--data-dir", DATA_DIR_ARG, *extra]
    log_path = log_dir / f"node-{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=node_environment(), stdout=log, stderr=subprocess.STDOUT)
    return NodeProcess(name, process, log_path)
