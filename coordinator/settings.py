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
DEFAULT_STATE_DIR = Path("./mfcpl-data")
ADMIN_TOKEN_FILE = "admin_token"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MFCPL_", env_file=".env", extra="ignore")

    state_dir: Path = Field(
        DEFAULT_STATE_DIR, description="The coordinator's state: the SQLite file, fs blobs and the admin token."
    )
    data_dir: Path | None = Field(
        None, description="Deprecated name of state_dir (MFCPL_DATA_DIR): used, with a warning, if state_dir is unset."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default `sqlite:///<state_dir>/mfcpl.db`. Postgres: postgresql+psycopg://..."
    )
    blob_store: Literal["fs", "db"] = Field(
        "fs", description="`fs`: content-addressed files under blob_dir; `db`: a table (replicas on several hosts)."
    )
    blob_dir: Path | None = Field(None, description="Default `<state_dir>/blobs`.")
    admin_token: str | None = Field(
        None, description="Operator token; generated into <state_dir>/admin_token if unset."
    )
    max_update_bytes: int = Field(256 * MiB, ge=1, description="Largest safetensors body (updates, model uploads).")
    max_json_bytes: int = Field(1 * MiB, ge=1, description="Largest JSON request body.")
    # Per token and per process (N workers or replicas allow N times as many); past them: 429 too_many_requests.
    max_uploads_per_token: int = Field(2, ge=1, description="Concurrent update uploads of one client token.")
    max_streams_per_token: int = Field(4, ge=1, description="Concurrent event streams of one client token.")
    max_admin_uploads: int = Field(4, ge=1, description="Concurrent model uploads of the admin token.")
    max_admin_streams: int = Field(32, ge=1, description="Concurrent event streams of the admin token.")
    body_read_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for the next part of a request body; past it 408 and close."
    )
    header_read_timeout_s: float = Field(
        30.0, gt=0, description="Longest time to receive a request's headers (`mfcpl serve`); past it the "
        "connection is closed."
    )
    default_round_deadline_s: float = Field(600.0, gt=0)
    cors_origins: list[str] = Field(default_factory=list)
    auto_migrate: bool = Field(True, description="Upgrade the schema to head when the app starts.")
    tick_s: float = Field(1.0, gt=0, description="Round timer interval.")
    closing_timeout_s: float = Field(
        120.0, gt=0, description="A round stuck in `closing` this long (crashed closer) is claimed again."
    )
    max_close_attempts: int = Field(
        3, ge=1, description="Attempts at closing a round (claims, crashed closers included) before it fails."
    )
    fsync: bool = Field(True, description="fsync blobs and the SQLite WAL before acknowledging. Only for benchmarks.")
    # Retention (coordinator/retention.py, docs/operations.md "Blob retention") and idempotency keys.
    gc_interval_s: float = Field(
        3600.0, ge=0, description="Run the blob garbage collector this often in every process; 0 = never (run "
        "`mfcpl gc` instead)."
    )
    gc_grace_s: float = Field(
        3600.0, ge=0, description="Never delete a blob written (or re-written) less than this long ago: an upload "
        "in progress may have stored its blob before its row commits."
    )
    gc_update_grace_s: float = Field(
        86400.0, ge=0, description="Update blobs of a closed or failed round are kept this long after the close."
    )
    keep_model_versions: int = Field(
        0, ge=0, description="0 = keep every model version; N = keep version 0, the newest N and every version "
        "still an input of an open or closing round (older versions, their prototype sets and strategy state go)."
    )
    idempotency_ttl_s: float = Field(
        86400.0, gt=0, description="How long an Idempotency-Key of a creating POST is remembered (and replayed)."
    )

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if self.data_dir is not None:
            if "state_dir" in self.model_fields_set:
                log.warning("MFCPL_DATA_DIR is ignored: MFCPL_STATE_DIR is set (%s)", self.state_dir)
            else:
                log.warning("MFCPL_DATA_DIR is deprecated for the coordinator's state; rename it to MFCPL_STATE_DIR")
                self.state_dir = self.data_dir
            self.data_dir = None
        if self.database_url is None:
            self.database_url = f"sqlite:///{(self.state_dir / 'mfcpl.db').resolve()}"
        if self.blob_dir is None:
            self.blob_dir = self.state_dir / "blobs"
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
        return self.state_dir / ADMIN_TOKEN_FILE


def ensure_admin_token(settings: Settings) -> str:
    """The admin token: from settings, else from ``<state_dir>/admin_token``, else generated there (mode 600)."""
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
