"""The round lifecycle: open, claim, aggregate, close or fail; the timer tick that drives it.

Every transition is a guarded UPDATE (``... WHERE state = 'open'``) whose rowcount says which caller won, so
any number of processes and timers may attempt it: exactly one succeeds. A closer writes its claim token and
time; a claim older than ``closing_timeout_s`` (a closer that crashed) can be taken over, and the final
``closing -> closed`` update checks the token, so a round is closed once even then.

Numbering: a failed round keeps its number; the next round opened gets the next number. Model version v is
the output of the v-th closed round (version 0 is the operator's upload).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coordinator.aggregation import aggregate_round, weighted_metrics
from coordinator.clients.orm import ClientRow
from coordinator.core import Services
from coordinator.events.service import emit
from coordinator.federations import service as federations
from coordinator.federations.orm import FederationRow
from coordinator.models.orm import ModelVersionRow, PrototypeSetRow
from coordinator.models.service import latest_prototype_row, prototype_levels_summary, tensor_specs
from coordinator.observability import AGGREGATION_SECONDS, ROUNDS
from coordinator.rounds.orm import RoundRow
from coordinator.rounds.sampling import round_seed, sample_participants
from coordinator.timeutil import utcnow
from coordinator.updates.orm import UpdateRow
from mfcpl.wire.schemas import Algorithm, EventType, FederationCreate, FederationStatus, RoundState
from mfcpl.wire.schemas import Round as RoundSchema
from mfcpl.wire.tensors import (
    decode,
    decode_prototypes,
    encode,
    encode_model,
    encode_prototypes,
    numpy_dtype,
    read_header,
)

log = logging.getLogger("mfcpl.rounds")

MOMENTUM_FORMAT = "mfcpl.momentum.v1"
ACTIVE_ROUND_STATES = (RoundState.OPEN, RoundState.CLOSING)


def round_schema(row: RoundRow) -> RoundSchema:
    return RoundSchema(federation_id=row.federation_id, number=row.number, state=RoundState(row.state),
                       seed=row.seed, participants=list(row.participants), received=row.received, quorum=row.quorum,
                       input_model_version=row.input_model_version, output_model_version=row.output_model_version,
                       prototype_version=row.prototype_version, deadline=row.deadline, opened_at=row.opened_at,
                       closed_at=row.closed_at, failure_reason=row.failure_reason, train_metrics=row.train_metrics)


def effective_quorum(config: FederationCreate) -> int:
    return config.quorum or config.clients_per_round


def effective_min_clients(config: FederationCreate) -> int:
    return config.min_clients or config.clients_per_round


def live_candidates(session: Session, fid: str, now: datetime) -> list[ClientRow]:
    """Clients with a live lease that reported at least one modality, ordered by (name, id)."""
    rows = session.scalars(
        select(ClientRow).where(ClientRow.federation_id == fid, ClientRow.revoked.is_(False),
                                ClientRow.lease_expires_at > now)
    ).all()
    return sorted((r for r in rows if r.modalities), key=lambda r: (r.name, r.id))


# ---------------------------------------------------------------------------------------------------- opening


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
    if latest is None:
        return None
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
    candidates = live_candidates(session, fid, now)
    if len(candidates) < effective_min_clients(config):
        return None
    number = (session.scalar(select(func.max(RoundRow.number)).where(RoundRow.federation_id == fid)) or 0) + 1
    seed = round_seed(config.seed, number)
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


# ---------------------------------------------------------------------------------------------------- closing


def claim(services: Services, fid: str, number: int, expected_participants: int, now: datetime) -> str | None:
    """open -> closing, if all participants reported or the deadline passed. Returns the claim token."""
    token = secrets.token_hex(8)
    with services.db.write() as session:
        result = session.execute(
            update(RoundRow)
            .where(RoundRow.federation_id == fid, RoundRow.number == number, RoundRow.state == RoundState.OPEN,
                   or_(RoundRow.received >= expected_participants, RoundRow.deadline <= now))
            .values(state=RoundState.CLOSING, claim_token=token, claimed_at=now)
        )
    return token if result.rowcount == 1 else None


def reclaim(services: Services, fid: str, number: int, now: datetime) -> str | None:
    """Take over a round whose closer has held it past ``closing_timeout_s``."""
    token = secrets.token_hex(8)
    stale = now - timedelta(seconds=services.settings.closing_timeout_s)
    with services.db.write() as session:
        result = session.execute(
            update(RoundRow)
            .where(RoundRow.federation_id == fid, RoundRow.number == number, RoundRow.state == RoundState.CLOSING,
                   RoundRow.claimed_at < stale)
            .values(claim_token=token, claimed_at=now)
        )
    if result.rowcount == 1:
        log.warning("federation %s: round %d was stuck in closing; claimed again", fid, number)
        return token
    return None


@dataclass
class _Aggregate:
    model_bytes: bytes
    momentum_bytes: bytes | None
    prototype_bytes: bytes | None
    prototype_levels: list[dict[str, Any]] | None
    train_metrics: dict[str, float]
    seconds: float


def _aggregate(services: Services, config: FederationCreate, input_model: ModelVersionRow,
               previous_prototypes: PrototypeSetRow | None, updates: Sequence[UpdateRow]) -> _Aggregate:
    started = time.perf_counter()
    blobs = services.blobs
    specs = input_model.tensor_specs
    global_weights = momentum = None
    if config.algorithm == Algorithm.FEDOPT:
        global_weights = decode(blobs.get(input_model.sha256))[0]
        momentum = decode(blobs.get(input_model.momentum_sha256))[0] if input_model.momentum_sha256 else None
    previous = decode_prototypes(blobs.get(previous_prototypes.sha256)) if previous_prototypes else None
    # Each update blob is an mmap for the duration of the fold (the db store spills it to a temporary file
    # first), so process memory stays O(model size) whatever the number of updates.
    with ExitStack() as opened:
        sources = [(opened.enter_context(blobs.open(u.sha256)), float(u.num_samples)) for u in updates]
        result = aggregate_round(config, sources, {name: numpy_dtype(spec[0]) for name, spec in specs.items()},
                                 global_weights=global_weights, momentum=momentum, previous=previous)
        del sources
    model_bytes = encode_model(result.weights)
    momentum_bytes = encode(result.momentum, {"format": MOMENTUM_FORMAT}) if result.momentum is not None else None
    prototype_bytes = levels = None
    if result.prototypes:
        prototype_bytes = encode_prototypes(result.prototypes, input_model.version + 1)
        levels = prototype_levels_summary(result.prototypes)
    train = weighted_metrics([(u.metrics, float(u.num_samples)) for u in updates])
    return _Aggregate(model_bytes, momentum_bytes, prototype_bytes, levels, train, time.perf_counter() - started)


def _fail(services: Services, fid: str, number: int, token: str, reason: str) -> bool:
    with services.db.write() as session:
        result = session.execute(
            update(RoundRow)
            .where(RoundRow.federation_id == fid, RoundRow.number == number, RoundRow.state == RoundState.CLOSING,
                   RoundRow.claim_token == token)
            .values(state=RoundState.FAILED, failure_reason=reason[:500], closed_at=utcnow())
        )
        if result.rowcount != 1:
            return False
        emit(session, fid, EventType.ROUND_FAILED, number, {"reason": reason})
    ROUNDS.labels("failed").inc()
    log.warning("federation %s: round %d failed: %s", fid, number, reason)
    return True


class _LostClaimError(Exception):
    pass


def finish(services: Services, fid: str, number: int, token: str) -> str:
    """Aggregate a claimed round and close it (or fail it below quorum). Returns the final state."""
    with services.db.read() as session:
        config = federations.config_of(services, session, fid)
        row = session.get(RoundRow, (fid, number))
        assert row is not None
        updates = list(session.scalars(
            select(UpdateRow).where(UpdateRow.federation_id == fid, UpdateRow.round == number)
            .order_by(UpdateRow.received_at, UpdateRow.id)
        ))
        input_model = session.get(ModelVersionRow, (fid, row.input_model_version))
        previous = latest_prototype_row(session, fid, at_most=row.input_model_version)
    # Fold updates in participant order (clients sorted by name), not arrival order: float sums then do not
    # depend on network timing, so a seeded federation gives bit-identical models (contract 7).
    position = {cid: i for i, cid in enumerate(row.participants)}
    updates.sort(key=lambda u: (position.get(u.client_id, len(position)), u.client_id))
    assert input_model is not None
    if len(updates) < row.quorum or not updates:
        _fail(services, fid, number, token, f"deadline passed with {len(updates)} of {row.quorum} updates needed")
        return RoundState.FAILED
    try:
        result = _aggregate(services, config, input_model, previous, updates)
    except Exception as exc:  # a round that cannot be aggregated fails visibly instead of staying stuck
        log.exception("federation %s: aggregation of round %d failed", fid, number)
        _fail(services, fid, number, token, f"aggregation failed: {exc}")
        return RoundState.FAILED

    blobs = services.blobs
    model_sha = blobs.put(result.model_bytes)
    momentum_sha = blobs.put(result.momentum_bytes) if result.momentum_bytes is not None else None
    prototype_sha = blobs.put(result.prototype_bytes) if result.prototype_bytes is not None else None
    version = input_model.version + 1
    now = utcnow()
    try:
        with services.db.write() as session:
            closed = session.execute(
                update(RoundRow)
                .where(RoundRow.federation_id == fid, RoundRow.number == number,
                       RoundRow.state == RoundState.CLOSING, RoundRow.claim_token == token)
                .values(state=RoundState.CLOSED, output_model_version=version,
                        prototype_version=version if prototype_sha else None, closed_at=now,
                        train_metrics=result.train_metrics, aggregation_s=result.seconds)
            )
            if closed.rowcount != 1:
                raise _LostClaimError
            session.add(ModelVersionRow(
                federation_id=fid, version=version, sha256=model_sha, size_bytes=len(result.model_bytes),
                round=number, tensor_specs=tensor_specs(read_header(result.model_bytes)),
                momentum_sha256=momentum_sha, created_at=now))
            if prototype_sha is not None:
                assert result.prototype_bytes is not None and result.prototype_levels is not None
                session.add(PrototypeSetRow(federation_id=fid, version=version, sha256=prototype_sha,
                                            size_bytes=len(result.prototype_bytes), levels=result.prototype_levels,
                                            created_at=now))
            session.flush()
            emit(session, fid, EventType.ROUND_CLOSED, number,
                 {"received": len(updates), "output_model_version": version,
                  "prototype_version": version if prototype_sha else None, "train_metrics": result.train_metrics,
                  "aggregation_s": result.seconds})
            closed_rounds = session.scalar(
                select(func.count()).select_from(RoundRow).where(RoundRow.federation_id == fid,
                                                                 RoundRow.state == RoundState.CLOSED))
            if (closed_rounds or 0) >= config.rounds:
                federations.transition(session, fid, FederationStatus.COMPLETED,
                                       (FederationStatus.RUNNING, FederationStatus.PAUSED, FederationStatus.WAITING))
    except _LostClaimError:
        log.warning("federation %s: round %d was claimed by another closer meanwhile", fid, number)
        return RoundState.CLOSING
    AGGREGATION_SECONDS.observe(result.seconds)
    ROUNDS.labels("closed").inc()
    log.info("federation %s: round %d closed with %d updates -> model version %d (%.3fs)", fid, number,
             len(updates), version, result.seconds)
    return RoundState.CLOSED


def close_if_due(services: Services, fid: str, number: int) -> str | None:
    """Claim and finish a round that is complete or past its deadline; then open the next one."""
    with services.db.read() as session:
        row = session.get(RoundRow, (fid, number))
    if row is None or row.state != RoundState.OPEN:
        return None
    token = claim(services, fid, number, len(row.participants), utcnow())
    if token is None:
        return None
    state = finish(services, fid, number, token)
    try_open_round(services, fid)
    return state


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
    for r in rounds:
        if r.state == RoundState.OPEN and (r.received >= len(r.participants) or r.deadline <= now):
            close_if_due(services, r.federation_id, r.number)
        elif r.state == RoundState.CLOSING and r.claimed_at is not None and r.claimed_at < stale:
            token = reclaim(services, r.federation_id, r.number, now)
            if token is not None:
                finish(services, r.federation_id, r.number, token)
    for fed in feds:
        if fed.status in (FederationStatus.WAITING, FederationStatus.RUNNING):
            try_open_round(services, fed.id)
