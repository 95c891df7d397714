from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, ForeignKeyConstraint, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db.base import Base


class UpdateRow(Base):
    __tablename__ = "updates"
    __table_args__ = (
        UniqueConstraint("federation_id", "round", "client_id", name="uq_updates_round_client"),
        UniqueConstraint("client_id", "idempotency_key", name="uq_updates_client_idempotency_key"),
        ForeignKeyConstraint(["federation_id", "round"], ["rounds.federation_id", "rounds.number"],
                             name="fk_updates_round_rounds"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    federation_id: Mapped[str] = mapped_column(String(40), index=True)
    round: Mapped[int] = mapped_column(Integer)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"))
    num_samples: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, Any]]
    prototype_dims: Mapped[dict[str, Any]]
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    received_at: Mapped[datetime]
