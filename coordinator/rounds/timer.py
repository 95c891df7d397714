"""The round timer: one pass over every active federation closes due rounds, re-claims closes stuck past
``closing_timeout_s`` or released after a failed attempt (failing those out of attempts) and opens the next
rounds. Every replica runs its own; the guarded transitions make that safe."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select

from coordinator.core import Services
from coordinator.federations import service as federations
from coordinator.federations.orm import FederationRow
from coordinator.rounds.closing import close_if_due, finish, reclaim
from coordinator.rounds.opening import try_open_round
from coordinator.rounds.orm import RoundRow
from coordinator.rounds.service import ACTIVE_ROUND_STATES
from coordinator.timeutil import utcnow
from mfcpl.wire.schemas import FederationStatus, RoundState

log = logging.getLogger("mfcpl.rounds")


def tick(services: Services) -> None:
    """One pass of the round timer over every active federation."""
    now = utcnow()
    active = [str(s) for s in federations.ACTIVE]
    with services.db.read() as session:
        feds = session.execute(select(FederationRow.id, FederationRow.status)
                               .where(FederationRow.status.in_(active))).all()
        rounds = session.execute(
            select(RoundRow.federation_id, RoundRow.number, RoundRow.state, RoundRow.received,
                   RoundRow.participants, RoundRow.deadline, RoundRow.claimed_at)
            .join(FederationRow, FederationRow.id == RoundRow.federation_id)
            .where(FederationRow.status.in_(active),
                   RoundRow.state.in_([str(s) for s in ACTIVE_ROUND_STATES]))
        ).all()
    stale = now - timedelta(seconds=services.settings.closing_timeout_s)
    # One federation's failure (a database error in its transition) must not stall the others: each step is
    # isolated and simply tried again at the next tick.
    for r in rounds:
        try:
            if r.state == RoundState.OPEN and (r.received >= len(r.participants) or r.deadline <= now):
                close_if_due(services, r.federation_id, r.number)
            elif r.state == RoundState.CLOSING and (r.claimed_at is None or r.claimed_at < stale):
                token = reclaim(services, r.federation_id, r.number, now)
                if token is not None:
                    finish(services, r.federation_id, r.number, token)
        except Exception:
            log.exception("round timer: federation %s, round %d", r.federation_id, r.number)
    for fed in feds:
        if fed.status in (FederationStatus.WAITING, FederationStatus.RUNNING):
            try:
                try_open_round(services, fed.id)
            except Exception:
                log.exception("round timer: opening the next round of federation %s", fed.id)
