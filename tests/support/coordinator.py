"""A real coordinator (``python -m mfcpl serve``) in a subprocess on a free loopback port.

Tests talk to it over HTTP exactly as clients and operators do. The process logs to a file, which is
quoted in the error when the server fails to become ready.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Self

import httpx

from coordinator.process import ServerProcess, free_port, server_env


class CoordinatorProcess(ServerProcess):
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
        self.extra_env = dict(env or {})
        port = port or free_port()
        super().__init__(log_path=log_path or self.data_dir / f"coordinator-{port}.log", port=port,
                         ready_timeout_s=ready_timeout_s)

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def environment(self) -> dict[str, str]:
        return server_env({
            "MFCPL_DATABASE_URL": self.database_url,
            "MFCPL_STATE_DIR": str(self.data_dir),
            "MFCPL_ADMIN_TOKEN": self.admin_token,
            "MFCPL_TICK_S": str(self.tick_s),
            **self.extra_env,
        })

    def start(self) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return super().start()

    def client(self, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        """An httpx client for this server; admin token unless another is given."""
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
