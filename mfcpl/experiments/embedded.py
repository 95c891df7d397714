"""An embedded coordinator: a real uvicorn server on loopback, SQLite in the run's directory."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Self

from coordinator.process import ServerProcess, server_env


class EmbeddedCoordinator(ServerProcess):
    """``with EmbeddedCoordinator(dir) as c: c.base_url, c.admin_token`` - a coordinator subprocess.

    It runs ``uvicorn coordinator.app:create_app --factory`` with its database (SQLite) and blobs under
    ``state_dir``; the log goes to ``state_dir/coordinator.log``. ``tick_s`` is the round timer period. The server
    gets SIGTERM if this process dies (no orphaned servers).
    """

    def __init__(self, state_dir: str | os.PathLike[str], *, tick_s: float = 0.05, startup_timeout_s: float = 60.0,
                 extra_env: dict[str, str] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.tick_s = tick_s
        self.extra_env = extra_env or {}
        self.admin_token = secrets.token_urlsafe(24)
        super().__init__(log_path=self.state_dir / "coordinator.log", launcher="uvicorn", log_level="warning",
                         access_log=False, ready_timeout_s=startup_timeout_s, poll_s=0.1, die_with_parent=True)

    def environment(self) -> dict[str, str]:
        return server_env({
            "MFCPL_STATE_DIR": str(self.state_dir),
            "MFCPL_DATABASE_URL": f"sqlite:///{(self.state_dir / 'coordinator.db').resolve()}",
            "MFCPL_ADMIN_TOKEN": self.admin_token,
            "MFCPL_TICK_S": str(self.tick_s),
            **self.extra_env,
        }, keep_mfcpl=True)

    def start(self) -> Self:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return super().start()
