"""Closing a round: claim, aggregate, then close it (or fail it below quorum), exactly once, in a bounded number
of attempts.

Every transition is a guarded UPDATE (``... WHERE state = 'open'``) whose rowcount says which caller won, so
any number of processes and timers may attempt it: exactly one succeeds. A closer writes its claim token and
time; a claim older than ``closing_timeout_s`` (a closer that crashed) can be taken over, and the final
``closing -> closed`` update checks the token, so a round is closed once even then.

Never an endless re-claim: every claim counts one attempt in ``rounds.close_attempts``. An aggregation error
(the inputs cannot make a model: mismatched tensors, an overflow) fails the round at once. Any other error
while closing (reading or storing blobs: a full disk, an OSError; memory; the database) is logged with its reason,
recorded in ``failure_reason`` and the claim released, so the next timer tick tries again; once
``max_close_attempts`` claims were made (those of crashed closers included) the round fails with
``round.failed`` and the last reason, and the federation goes on with its next round.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, and_, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from coordinator.aggregation import aggregate_round, weighted_metrics
from coordinator.core import Services
from coordinator.events.service import emit
from coordinator.federations import service as federations
from coordinator.model_versions.orm import ModelVersionRow, PrototypeSetRow
from coordinator.model_versions.service import latest_prototype_row, prototype_levels_summary, tensor_specs
from coordinator.observability import AGGREGATION_SECONDS, ROUND_SECONDS, ROUNDS
from coordinator.rounds.opening import try_open_round
from coordinator.rounds.orm import RoundRow
from coordinator.strategies import strategy_for
from coordinator.timeutil import utcnow
from coordinator.updates.orm import UpdateRow
from mfcpl.wire.schemas import EventType, FederationCreate, FederationStatus, RoundState
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


def claim(services: Services, fid: str, number: int, expected_participants: int, now: datetime) -> str | None:
    """open -> closing, if all participants reported or the deadline passed. Returns the claim token."""
    token = secrets.token_hex(8)
    with services.db.write() as session:
        result = session.execute(
            update(RoundRow)
            .where(RoundRow.federation_id == fid, RoundRow.number == number, RoundRow.state == RoundState.OPEN,
                   or_(RoundRow.received >= expected_participants, RoundRow.deadline <= now))
            .values(state=RoundState.CLOSING, claim_token=token, claimed_at=now,
                    close_attempts=RoundRow.close_attempts + 1)
        )
    return token if cast(CursorResult[Any], result).rowcount == 1 else None


def reclaimable(now: datetime, closing_timeout_s: float) -> ColumnElement[bool]:
    """A closing round nobody holds: its claim was released after a failed attempt, or is older than
    ``closing_timeout_s`` (its closer crashed, or is too slow)."""
    stale = now - timedelta(seconds=closing_timeout_s)
    return and_(RoundRow.state == RoundState.CLOSING,
                or_(RoundRow.claimed_at.is_(None), RoundRow.claimed_at < stale))


def reclaim(services: Services, fid: str, number: int, now: datetime) -> str | None:
    """Take over a closing round nobody holds (see :func:`reclaimable`) for one more attempt; fail it instead when
    ``max_close_attempts`` were made. Returns the new claim token, or None (not reclaimable, lost the race, or
    failed now)."""
    token = secrets.token_hex(8)
    limit = services.settings.max_close_attempts
    where = (RoundRow.federation_id == fid, RoundRow.number == number,
             reclaimable(now, services.settings.closing_timeout_s))
    with services.db.write() as session:
        result = session.execute(
            update(RoundRow).where(*where, RoundRow.close_attempts < limit)
            .values(claim_token=token, claimed_at=now, close_attempts=RoundRow.close_attempts + 1)
            .returning(RoundRow.close_attempts, RoundRow.failure_reason)
        ).first()
        if result is not None:
            attempt, last_error = result
            log.warning("federation %s: round %d was left in closing (%s); claimed again, attempt %d of %d", fid,
                        number, last_error or "its closer crashed or timed out", attempt, limit)
            return token
        row = session.execute(
            select(RoundRow.close_attempts, RoundRow.failure_reason, RoundRow.claimed_at)
            .where(*where, RoundRow.close_attempts >= limit)
        ).first()
        if row is None:
            return None
        attempts, last_error, claimed_at = row
        if claimed_at is None and last_error:  # released after an error, not retried (the limit was lowered)
            last = last_error
        else:  # the last closer died or overran closing_timeout_s
            last = "the closer crashed or timed out" + (f" (before: {last_error})" if last_error else "")
        reason = f"closing failed {attempts} times (max_close_attempts {limit}); last attempt: {last}"
        _fail_in(session, fid, number, reason, *where, RoundRow.close_attempts >= limit)
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
    strategy = strategy_for(config.algorithm)
    global_weights = decode(blobs.get(input_model.sha256))[0] if strategy.needs_global_weights else None
    state = None
    if strategy.stateful and input_model.momentum_sha256:
        state = decode(blobs.get(input_model.momentum_sha256))[0]
    previous = decode_prototypes(blobs.get(previous_prototypes.sha256)) if previous_prototypes else None
    # Each update blob is an mmap for the duration of the fold (the db store spills it to a temporary file
    # first), so process memory stays O(model size) whatever the number of updates.
    with ExitStack() as opened:
        sources = [(opened.enter_context(blobs.open(u.sha256)), float(u.num_samples)) for u in updates]
        result = aggregate_round(config, sources, {name: numpy_dtype(spec[0]) for name, spec in specs.items()},
                                 global_weights=global_weights, state=state, previous=previous)
        del sources
    model_bytes = encode_model(result.weights)
    momentum_bytes = encode(result.state, {"format": MOMENTUM_FORMAT}) if result.state is not None else None
    prototype_bytes = levels = None
    if result.prototypes:
        prototype_bytes = encode_prototypes(result.prototypes, input_model.version + 1)
        levels = prototype_levels_summary(result.prototypes)
    train = weighted_metrics([(u.metrics, float(u.num_samples)) for u in updates])
    return _Aggregate(model_bytes, momentum_bytes, prototype_bytes, levels, train, time.perf_counter() - started)


def _fail_in(session: Session, fid: str, number: int, reason: str, *where: ColumnElement[bool]) -> bool:
    """closing -> failed under the guard ``where``, with the ``round.failed`` event, in the caller's transaction."""
    reason = reason[:500]
    result = session.execute(
        update(RoundRow).where(RoundRow.federation_id == fid, RoundRow.number == number,
                               RoundRow.state == RoundState.CLOSING, *where)
        .values(state=RoundState.FAILED, failure_reason=reason, closed_at=utcnow())
    )
    if cast(CursorResult[Any], result).rowcount != 1:
        return False
    emit(session, fid, EventType.ROUND_FAILED, number, {"reason": reason})
    ROUNDS.labels("failed").inc()
    log.warning("federation %s: round %d failed: %s", fid, number, reason)
    return True


def _fail(services: Services, fid: str, number: int, token: str, reason: str) -> bool:
    with services.db.write() as session:
        return _fail_in(session, fid, number, reason, RoundRow.claim_token == token)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _attempt_failed(services: Services, fid: str, number: int, token: str, exc: Exception) -> str:
    """After an error while closing: fail the round if this was its last attempt, else record the reason and
    release the claim (the next timer tick tries again). Returns the round's state as far as we know."""
    limit = services.settings.max_close_attempts
    try:
        with services.db.write() as session:
            attempts = session.scalar(select(RoundRow.close_attempts).where(
                RoundRow.federation_id == fid, RoundRow.number == number, RoundRow.state == RoundState.CLOSING,
                RoundRow.claim_token == token))
            if attempts is None:
                log.warning("federation %s: closing round %d failed (%s), and the round is no longer ours", fid,
                            number, _describe(exc))
                return RoundState.CLOSING
            if attempts >= limit:
                reason = f"closing failed {attempts} times (max_close_attempts {limit}); last attempt: {_describe(exc)}"
                _fail_in(session, fid, number, reason, RoundRow.claim_token == token)
                return RoundState.FAILED
            log.warning("federation %s: closing round %d failed (attempt %d of %d), it is tried again: %s", fid,
                        number, attempts, limit, _describe(exc))
            session.execute(
                update(RoundRow)
                .where(RoundRow.federation_id == fid, RoundRow.number == number,
                       RoundRow.state == RoundState.CLOSING, RoundRow.claim_token == token)
                .values(claim_token=None, claimed_at=None,
                        failure_reason=f"close attempt {attempts} failed: {_describe(exc)}"[:500])
            )
    except Exception:  # the database itself is failing: the claim expires after closing_timeout_s
        log.exception("federation %s: could not record the failed close of round %d", fid, number)
    return RoundState.CLOSING


class _LostClaimError(Exception):
    pass


# Errors of the machinery rather than of the round's inputs: a close that meets one is tried again (bounded).
_RETRIED = (OSError, MemoryError, SQLAlchemyError)


def finish(services: Services, fid: str, number: int, token: str) -> str:
    """Aggregate a claimed round and close it (or fail it below quorum). Returns the round's state afterwards.

    Never raises for an error of the close itself: see the module docstring for what happens then."""
    try:
        return _finish(services, fid, number, token)
    except Exception as exc:
        log.debug("closing round %d of %s failed", number, fid, exc_info=True)
        return _attempt_failed(services, fid, number, token, exc)


def _finish(services: Services, fid: str, number: int, token: str) -> str:
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
    except _RETRIED:
        raise  # reading the blobs failed, or memory ran short: worth another attempt (finish)
    except Exception as exc:  # the updates cannot make a model: the round fails visibly, at once
        log.debug("federation %s: aggregation of round %d failed", fid, number, exc_info=True)
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
                .values(state=RoundState.CLOSED, output_model_version=version, failure_reason=None,
                        prototype_version=version if prototype_sha else None, closed_at=now,
                        train_metrics=result.train_metrics, aggregation_s=result.seconds)
            )
            if cast(CursorResult[Any], closed).rowcount != 1:
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
        log.warning("federation %s: round %d is no longer ours (claimed again by another closer, or the "
                    "federation was cancelled); nothing committed", fid, number)
        return RoundState.CLOSING
    AGGREGATION_SECONDS.observe(result.seconds)
    ROUND_SECONDS.observe(max(0.0, (now - row.opened_at).total_seconds()))
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
