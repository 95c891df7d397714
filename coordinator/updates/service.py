"""Update ingestion: replay detection, round checks, validation, durable blob, one short write transaction.

Order matters: a replay of an accepted update is answered (200) even after its round closed, so the
idempotency lookup comes first; a refusal changes nothing (the blob of a refused body is never written,
except when the final guarded UPDATE loses to a concurrent close, which leaves an unreferenced blob).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from client_sdk.schemas import ErrorCode, EventType, RoundState, UpdateReceipt
from coordinator.core import Services
from coordinator.events.service import emit
from coordinator.federations import service as federations
from coordinator.models.service import latest_prototype_row, model_specs
from coordinator.problems import ProblemError
from coordinator.rounds.orm import RoundRow
from coordinator.timeutil import new_id, utcnow
from coordinator.updates.orm import UpdateRow
from coordinator.updates.validation import validate_update


@dataclass(frozen=True)
class IngestResult:
    receipt: UpdateReceipt
    created: bool
    round_complete: bool = False


class _RoundClosedError(Exception):
    pass


def receipt_of(row: UpdateRow, replayed: bool = False) -> UpdateReceipt:
    return UpdateReceipt(id=row.id, federation_id=row.federation_id, round=row.round, client_id=row.client_id,
                         num_samples=row.num_samples, sha256=row.sha256, size_bytes=row.size_bytes,
                         received_at=row.received_at, replayed=replayed)


def _replay(session: Session, fid: str, number: int, client_id: str, sha256: str,
            idempotency_key: str | None) -> UpdateReceipt | None:
    if idempotency_key is not None:
        keyed = session.scalars(select(UpdateRow).where(UpdateRow.client_id == client_id,
                                                        UpdateRow.idempotency_key == idempotency_key)).first()
        if keyed is not None:
            if keyed.sha256 == sha256 and keyed.round == number and keyed.federation_id == fid:
                return receipt_of(keyed, replayed=True)
            raise ProblemError(409, ErrorCode.IDEMPOTENCY_CONFLICT,
                               f"Idempotency-Key {idempotency_key!r} was already used for a different update "
                               f"(round {keyed.round}, sha256 {keyed.sha256[:12]}...)")
    existing = session.scalars(select(UpdateRow).where(UpdateRow.federation_id == fid, UpdateRow.round == number,
                                                       UpdateRow.client_id == client_id)).first()
    if existing is None:
        return None
    if existing.sha256 == sha256:
        return receipt_of(existing, replayed=True)
    raise ProblemError(409, ErrorCode.IDEMPOTENCY_CONFLICT,
                       f"this client already has a different update accepted for round {number} "
                       f"(sha256 {existing.sha256[:12]}...); an update cannot be replaced")


def _check_round(session: Session, fid: str, number: int, client_id: str) -> RoundRow:
    fed = federations.get_row(session, fid)
    if fed.status in federations.TERMINAL:
        raise ProblemError(409, ErrorCode.FEDERATION_NOT_RUNNING, f"federation {fid} is {fed.status}")
    row = session.get(RoundRow, (fid, number))
    if row is None:
        raise ProblemError(404, ErrorCode.NOT_FOUND, f"federation {fid} has no round {number}")
    if row.state != RoundState.OPEN:
        latest = session.scalar(select(func.max(RoundRow.number)).where(RoundRow.federation_id == fid))
        if latest is not None and latest > number:
            raise ProblemError(409, ErrorCode.STALE_ROUND, f"round {number} is {row.state}; round {latest} is the "
                               "current one")
        raise ProblemError(409, ErrorCode.ROUND_NOT_OPEN, f"round {number} is {row.state}, not open")
    if row.deadline <= utcnow():
        raise ProblemError(409, ErrorCode.ROUND_NOT_OPEN, f"round {number} passed its deadline "
                           f"{row.deadline.isoformat()}")
    if client_id not in row.participants:
        raise ProblemError(403, ErrorCode.NOT_PARTICIPANT, f"client {client_id} was not sampled for round {number}")
    return row


def _expected_dims(session: Session, fid: str, number: int, input_version: int) -> dict[str, int]:
    """Prototype dimension per level: from the previous complete prototypes, else from accepted updates."""
    dims: dict[str, int] = {}
    previous = latest_prototype_row(session, fid, at_most=input_version)
    if previous is not None:
        dims.update({level["name"]: int(level["dim"]) for level in previous.levels})
    for accepted in session.scalars(select(UpdateRow.prototype_dims).where(UpdateRow.federation_id == fid,
                                                                           UpdateRow.round == number)):
        for level, d in accepted.items():
            dims.setdefault(level, int(d))
    return dims


def ingest(services: Services, fid: str, number: int, client_id: str, body: bytearray | memoryview,
           idempotency_key: str | None, sha256: str | None = None) -> IngestResult:
    """Accept or refuse one update; ``sha256`` may be given when it was computed while reading the body."""
    sha256 = sha256 or hashlib.sha256(body).hexdigest()
    # The blob is written and fsynced in the background while the checks run; it becomes visible (renamed
    # to its sha256) only if they pass, and always before the row is committed.
    pending = services.blobs.begin_put(body, sha256)
    try:
        with services.db.read() as session:
            replay = _replay(session, fid, number, client_id, sha256, idempotency_key)
            if replay is not None:
                pending.abort()
                return IngestResult(replay, created=False)
            row = _check_round(session, fid, number, client_id)
            config = federations.config_of(services, session, fid)
            specs = model_specs(services, session, fid, row.input_model_version)
            expected_dims = _expected_dims(session, fid, number, row.input_model_version)
        checked = validate_update(body, specs=specs, num_classes=config.num_classes,
                                  modalities={m.name for m in config.modalities}, expected_dims=expected_dims,
                                  input_model_version=row.input_model_version)
    except BaseException:
        pending.abort()
        raise
    pending.commit()
    now = utcnow()
    try:
        with services.db.write() as session:
            received = session.execute(
                update(RoundRow)
                .where(RoundRow.federation_id == fid, RoundRow.number == number, RoundRow.state == RoundState.OPEN,
                       RoundRow.deadline > now)
                .values(received=RoundRow.received + 1)
                .returning(RoundRow.received)
            ).scalar_one_or_none()
            if received is None:
                raise _RoundClosedError
            update_row = UpdateRow(id=new_id("upd"), federation_id=fid, round=number, client_id=client_id,
                                   num_samples=checked.num_samples, sha256=sha256, size_bytes=len(body),
                                   metrics=checked.metrics, prototype_dims=checked.prototype_dims,
                                   idempotency_key=idempotency_key, received_at=now)
            session.add(update_row)
            session.flush()
            emit(session, fid, EventType.UPDATE_RECEIVED, number,
                 {"client_id": client_id, "num_samples": checked.num_samples, "received": received,
                  "participants": len(row.participants)})
    except (IntegrityError, _RoundClosedError):
        # A concurrent identical request won (the insert, or the last place before the round closed):
        # answer as its replay, or refuse.
        with services.db.read() as session:
            replay = _replay(session, fid, number, client_id, sha256, idempotency_key)
        if replay is not None:
            return IngestResult(replay, created=False)
        raise ProblemError(409, ErrorCode.ROUND_NOT_OPEN, f"round {number} closed while this update arrived") from None
    return IngestResult(receipt_of(update_row), created=True, round_complete=received >= len(row.participants))


def list_updates(session: Session, fid: str, number: int) -> list[UpdateReceipt]:
    federations.get_row(session, fid)
    rows = session.scalars(select(UpdateRow).where(UpdateRow.federation_id == fid, UpdateRow.round == number)
                           .order_by(UpdateRow.received_at, UpdateRow.id))
    return [receipt_of(r) for r in rows]


__all__ = ["IngestResult", "ingest", "list_updates", "receipt_of"]
