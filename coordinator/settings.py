"""Coordinator settings: environment variables with the prefix ``MFCPL_`` or a ``.env`` file."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("mfcpl.settings")

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MFCPL_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("./mfcpl-data"), description="Where the SQLite file, blobs and admin token live.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default `sqlite:///<data_dir>/mfcpl.db`. Postgres: postgresql+psycopg://..."
    )
    blob_store: Literal["fs", "db"] = Field(
        "fs", description="`fs`: content-addressed files under blob_dir; `db`: a table (replicas on several hosts)."
    )
    blob_dir: Path | None = Field(None, description="Default `<data_dir>/blobs`.")
    admin_token: str | None = Field(None, description="Operator token; generated into <data_dir>/admin_token if unset.")
    max_update_bytes: int = Field(256 * MiB, ge=1, description="Largest safetensors body (updates, model uploads).")
    max_json_bytes: int = Field(1 * MiB, ge=1, description="Largest JSON request body.")
    default_round_deadline_s: float = Field(600.0, gt=0)
    cors_origins: list[str] = Field(default_factory=list)
    auto_migrate: bool = Field(True, description="Upgrade the schema to head when the app starts.")
    tick_s: float = Field(1.0, gt=0, description="Round timer interval.")
    closing_timeout_s: float = Field(
        120.0, gt=0, description="A round stuck in `closing` this long (crashed closer) is claimed again."
    )
    fsync: bool = Field(True, description="fsync blobs and the SQLite WAL before acknowledging. Only for benchmarks.")

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if self.database_url is None:
            self.database_url = f"sqlite:///{(self.data_dir / 'mfcpl.db').resolve()}"
        if self.blob_dir is None:
            self.blob_dir = self.data_dir / "blobs"
        return self

    @property
    def db_url(self) -> str:
        assert self.database_url is not None
        return self.database_url

    @property
    def blobs_path(self) -> Path:
        assert self.blob_dir is not None
        return self.blob_dir

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin_token"


def ensure_admin_token(settings: Settings) -> str:
    """The admin token: from settings, else from ``<data_dir>/admin_token``, else generated there (mode 600)."""
    if settings.admin_token:
        return settings.admin_token
    path = settings.admin_token_file
    if path.exists():
        token = path.read_text().strip()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        token = "mfcpl_a_" + secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process wrote it first
            token = path.read_text().strip()
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(token + "\n")
            log.warning("generated an admin token; it is in %s (mode 600)", path.resolve())
    settings.admin_token = token
    return token
