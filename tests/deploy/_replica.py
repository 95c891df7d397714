"""deploy/start.sh run as is, outside a container: one coordinator replica on a loopback port."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from coordinator.process import ServerProcess, server_env

from ._support import DEPLOY


class Replica(ServerProcess):
    """One ``deploy/start.sh`` process (uvicorn after its exec) and its log file.

    ``start()`` only launches it: replicas are started together (their migrations race), then each ``wait_ready()``.
    """

    def __init__(self, port: int, log_path: Path, env: dict[str, str]) -> None:
        super().__init__(command=["sh", str(DEPLOY / "start.sh")], port=port, log_path=log_path, env=env,
                         name=f"replica on {port}", ready_timeout_s=90.0, poll_s=0.1, stop_timeout_s=30.0)

    @property
    def url(self) -> str:
        return self.base_url

    def start(self) -> Self:
        return self.launch()

    def log(self) -> str:
        return self.read_log()

    def children(self) -> list[str]:
        """Command lines of the direct children of the server process (uvicorn's workers)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if int(fields[1]) == self.pid:
                found.append(cmdline)
        return found

    def stop(self, timeout_s: float | None = None) -> int:
        """SIGTERM (what Docker and the kubelet send); SIGKILL if it has not exited in time."""
        code = super().stop(timeout_s)
        return 0 if code is None else code


def replica_env(database_url: str, data_dir: Path, port: int, admin_token: str, workers: int,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a container would get: MFCPL_* settings, the venv's bin first on PATH."""
    return server_env({
        "MFCPL_DATABASE_URL": database_url,
        "MFCPL_STATE_DIR": str(data_dir),
        "MFCPL_BLOB_STORE": "db",
        "MFCPL_ADMIN_TOKEN": admin_token,
        "MFCPL_HOST": "127.0.0.1",
        "MFCPL_PORT": str(port),
        "MFCPL_WORKERS": str(workers),
        "MFCPL_TICK_S": "0.2",
        "MFCPL_GRACEFUL_SHUTDOWN_S": "5",
        **(extra or {}),
    }, venv_on_path=True)
