from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db.base import Base


class ClientRow(Base):
    __tablename__ = "clients"
    __table_args__ = (UniqueConstraint("federation_id", "name", name="uq_clients_federation_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    federation_id: Mapped[str] = mapped_column(ForeignKey("federations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked: Mapped[bool] = mapped_column(default=False)
    modalities: Mapped[list[Any] | None]
    class_counts: Mapped[list[Any] | None]
    num_samples: Mapped[int | None] = mapped_column(Integer)
    last_seen_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
