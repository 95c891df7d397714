from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db.base import Base


class ModelVersionRow(Base):
    __tablename__ = "model_versions"

    federation_id: Mapped[str] = mapped_column(ForeignKey("federations.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    round: Mapped[int | None] = mapped_column(Integer)
    # {name: [dtype code, shape]} of every tensor: updates are validated against it without reading the blob.
    tensor_specs: Mapped[dict[str, Any]]
    # FedOpt server momentum after the step that produced this version (a safetensors blob).
    momentum_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]


class PrototypeSetRow(Base):
    __tablename__ = "prototype_sets"

    federation_id: Mapped[str] = mapped_column(ForeignKey("federations.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    levels: Mapped[list[Any]]
    created_at: Mapped[datetime]
