from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db.base import Base


class EvaluationRow(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    federation_id: Mapped[str] = mapped_column(ForeignKey("federations.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(40))
    metrics: Mapped[dict[str, Any]]
    model_version: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
