from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db.base import Base


class RoundRow(Base):
    __tablename__ = "rounds"

    federation_id: Mapped[str] = mapped_column(ForeignKey("federations.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(20), index=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    participants: Mapped[list[Any]]
    quorum: Mapped[int] = mapped_column(Integer)
    received: Mapped[int] = mapped_column(Integer, default=0)
    input_model_version: Mapped[int] = mapped_column(Integer)
    output_model_version: Mapped[int | None] = mapped_column(Integer)
    prototype_version: Mapped[int | None] = mapped_column(Integer)
    deadline: Mapped[datetime]
    opened_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    failure_reason: Mapped[str | None] = mapped_column(String(500))
    train_metrics: Mapped[dict[str, Any]]
    aggregation_s: Mapped[float | None] = mapped_column(Float)
    # Who is closing it and since when: a crashed closer's claim expires after closing_timeout_s.
    claim_token: Mapped[str | None] = mapped_column(String(40))
    claimed_at: Mapped[datetime | None]
    # Claims of this round's close so far (a crashed or failed attempt included); bounded by max_close_attempts.
    close_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
