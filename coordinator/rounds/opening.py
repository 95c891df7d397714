"""Opening a round: when a federation is ready, the next round number, its seeded participants, quorum and
deadline.

Numbering: a failed round keeps its number; the next round opened gets the next number. Model version v is
the output of the v-th closed round (version 0 is the operator's upload).

Readiness (who counts, ``min_clients``) is :mod:`coordinator.federations.readiness`. A federation that cannot
open its next round says why: the opener records a ``federation.waiting`` event whenever the reason changes
(not at every tick).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coordinator.core import Services
from coordinator.events.orm import EventRow
from coordinator.events.service import emit
from coordinator.federations import service as federations
from coordinator.federations.orm import FederationRow
from coordinator.federations.readiness import Readiness, assess, population
from coordinator.model_versions.orm import ModelVersionRow
from coordinator.observability import ROUNDS
from coordinator.rounds.orm import RoundRow
from coordinator.rounds.sampling import round_seed, sample_participants
from coordinator.rounds.service import ACTIVE_ROUND_STATES
from coordinator.timeutil import utcnow
from mfcpl.wire.schemas import EventType, FederationCreate, FederationStatus, RoundState

log = logging.getLogger("mfcpl.rounds")


def effective_quorum(config: FederationCreate) -> int:
    return config.quorum or config.clients_per_round


def note_waiting(session: Session, fid: str, verdict: Readiness) -> bool:
    """Record ``federation.waiting`` with the reason, unless the federation's last event already says it."""
    last = session.execute(
        select(EventRow.type, EventRow.data)
        .where(EventRow.federation_id == fid, EventRow.type != str(EventType.UPDATE_RECEIVED))
        .order_by(EventRow.seq.desc()).limit(1)
    ).first()
    if last is not None and last.type == EventType.FEDERATION_WAITING and last.data.get("reason") == verdict.reason:
        return False
    pop = verdict.population
    emit(session, fid, EventType.FEDERATION_WAITING, None,
         {"reason": verdict.reason, "needed": verdict.needed, "live": pop.live, "can_train": len(pop.trainable),
          "no_modality": pop.no_modality, "no_profile": pop.no_profile})
    log.info("federation %s waits: %s", fid, verdict.reason)
    return True


def try_open_round(services: Services, fid: str) -> int | None:
    """Open the next round if the federation is ready; returns its number, or None (not ready, or lost a race)."""
    now = utcnow()
    try:
        with services.db.write() as session:
            return _open_round(services, session, fid, now)
    except IntegrityError:
        return None  # another process opened this round number first


def _open_round(services: Services, session: Session, fid: str, now: datetime) -> int | None:
    # Lock the federation row (Postgres; SQLite writers are serialised already) so that openers of one
    # federation run one at a time and each sees the rounds the previous one committed.
    fed = session.get(FederationRow, fid, with_for_update=True)
    if fed is None or fed.status not in (FederationStatus.WAITING, FederationStatus.RUNNING):
        return None
    config = federations.config_of(services, session, fid)
    latest = session.scalar(select(func.max(ModelVersionRow.version)).where(ModelVersionRow.federation_id == fid))
    active = session.scalar(
        select(exists().where(RoundRow.federation_id == fid, RoundRow.state.in_([str(s) for s in ACTIVE_ROUND_STATES])))
    )
    if active:
        return None
    closed = session.scalar(
        select(func.count()).select_from(RoundRow).where(RoundRow.federation_id == fid,
                                                         RoundRow.state == RoundState.CLOSED)
    ) or 0
    if closed >= config.rounds:
        federations.transition(session, fid, FederationStatus.COMPLETED,
                               (FederationStatus.WAITING, FederationStatus.RUNNING))
        return None
    verdict = assess(config, latest is not None, population(session, fid, now))
    if not verdict.ready or latest is None:
        note_waiting(session, fid, verdict)
        return None
    number = (session.scalar(select(func.max(RoundRow.number)).where(RoundRow.federation_id == fid)) or 0) + 1
    seed = round_seed(config.seed, number)
    # Candidates: the live clients that can train, ordered by (name, id), so the seeded draw is reproducible.
    candidates = verdict.population.trainable
    participants = sample_participants([c.id for c in candidates], config.clients_per_round, seed)
    deadline_s = config.round_deadline_s or services.settings.default_round_deadline_s
    row = RoundRow(federation_id=fid, number=number, state=RoundState.OPEN, seed=seed, participants=participants,
                   quorum=min(effective_quorum(config), len(participants)), received=0,
                   input_model_version=latest, deadline=now + timedelta(seconds=deadline_s), opened_at=now,
                   train_metrics={})
    session.add(row)
    session.flush()
    if fed.status == FederationStatus.WAITING:
        federations.transition(session, fid, FederationStatus.RUNNING, (FederationStatus.WAITING,))
    emit(session, fid, EventType.ROUND_OPENED, number,
         {"participants": participants, "quorum": row.quorum, "input_model_version": latest,
          "deadline": row.deadline.isoformat()})
    ROUNDS.labels("opened").inc()
    log.info("federation %s: round %d opened with %d participants", fid, number, len(participants))
    return number
