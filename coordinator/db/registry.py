"""Imports every ORM module so ``Base.metadata`` is complete (Alembic, tests)."""

from coordinator.blobs.orm import BlobRow
from coordinator.clients.orm import ClientRow
from coordinator.db.base import Base
from coordinator.events.orm import EventRow
from coordinator.federations.orm import FederationRow
from coordinator.idempotency import IdempotencyKeyRow
from coordinator.metrics.orm import EvaluationRow
from coordinator.model_versions.orm import ModelVersionRow, PrototypeSetRow
from coordinator.rounds.orm import RoundRow
from coordinator.updates.orm import UpdateRow
from coordinator.viewers.orm import ViewerTokenRow

metadata = Base.metadata

__all__ = [
    "BlobRow", "ClientRow", "EvaluationRow", "EventRow", "FederationRow", "IdempotencyKeyRow", "ModelVersionRow",
    "PrototypeSetRow", "RoundRow", "UpdateRow", "ViewerTokenRow", "metadata",
]
