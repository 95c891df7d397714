"""Update ingestion: admission before the body, validation, durable blob, one short write transaction.

The path of one update (``admit`` then ``ingest_upload``):

1. ``admit``, before the body is read (one SELECT): federation not finished, round exists and is open,
   deadline not passed, client sampled, and whether this client already has an update for the round (or
   used this Idempotency-Key). A refusal there answers at once and reads no body. A client that already
   reported goes the replay way: the body is only hashed, then answered as a replay (200) or refused
   (409 ``idempotency_conflict``), even after the round closed.
2. The body streams into a temporary blob file (hashed and written by a pool thread while it arrives).
3. ``ingest_upload``: validation against the round's immutable facts (tensor specs, prototype dimensions;
   cached per process), then the blob is made durable, then one write transaction: the guarded
   ``received + 1`` on the open round, the row insert, the event. The unique key (federation, round, client)
   and (client, Idempotency-Key) decide a race between identical requests: the loser is answered as the
   winner's replay. On SQLite the write transactions of concurrent ingests are committed as a group (one
   commit, a SAVEPOINT each; see ``_GroupCommit``). The 201 goes out only after both commits (contract 4).

A refusal changes nothing: no row, and the temporary file is removed (a blob is left unreferenced only when
the final guarded UPDATE loses to a concurrent close).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coordinator.blobs import BlobUpload, Buffer
from coordinator.clients.service import renew_lease
from coordinator.core import Services
from coordinator.db.engine import Database
from coordinator.events.service import emit
from coordinator.facts import RoundFacts
from coordinator.federations import service as federations
from coordinator.federations.orm import FederationRow
from coordinator.model_versions.service import latest_prototype_row, model_specs
from coordinator.problems import ProblemError
from coordinator.rounds.orm import RoundRow
from coordinator.timeutil import new_id, utcnow
from coordinator.updates.orm import UpdateRow
from coordinator.updates.validation import ValidatedUpdate, validate_update
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import EventType, RoundState, UpdateReceipt


@dataclass(frozen=True)
class IngestResult:
    receipt: UpdateReceipt
    created: bool
    round_complete: bool = False


@dataclass(frozen=True)
class Admission:
    """The outcome of the checks made before the body: accept it (``facts``), or answer a replay."""

    fid: str
    number: int
    client_id: str
    facts: RoundFacts | None
    reported: bool  # this client has an update for the round, or used this Idempotency-Key: replay or conflict


class _RoundClosedError(Exception):
    pass


def receipt_of(row: Any, replayed: bool = False) -> UpdateReceipt:
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
            raise ProblemError(ErrorCode.IDEMPOTENCY_CONFLICT,
                               f"Idempotency-Key {idempotency_key!r} was already used for a different update "
                               f"(round {keyed.round}, sha256 {keyed.sha256[:12]}...)")
    existing = session.scalars(select(UpdateRow).where(UpdateRow.federation_id == fid, UpdateRow.round == number,
                                                       UpdateRow.client_id == client_id)).first()
    if existing is None:
        return None
    if existing.sha256 == sha256:
        return receipt_of(existing, replayed=True)
    raise ProblemError(ErrorCode.IDEMPOTENCY_CONFLICT,
                       f"this client already has a different update accepted for round {number} "
                       f"(sha256 {existing.sha256[:12]}...); an update cannot be replaced")


# ---------------------------------------------------------------------------------------------- admission


def _check_round(session: Session, fid: str, number: int, client_id: str, status: str | None, state: str | None,
                 deadline: datetime | None, facts: RoundFacts | None) -> None:
    """Refuse an update for a finished federation, an unknown, closed or late round, or a non-participant."""
    if status is None:
        raise ProblemError(ErrorCode.NOT_FOUND, f"federation {fid} does not exist")
    if status in federations.TERMINAL:
        raise ProblemError(ErrorCode.FEDERATION_NOT_RUNNING, f"federation {fid} is {status}")
    if state is None or deadline is None or facts is None:
        raise ProblemError(ErrorCode.NOT_FOUND, f"federation {fid} has no round {number}")
    if state != RoundState.OPEN:
        latest = session.scalar(select(func.max(RoundRow.number)).where(RoundRow.federation_id == fid))
        if latest is not None and latest > number:
            raise ProblemError(ErrorCode.STALE_ROUND, f"round {number} is {state}; round {latest} is the "
                               "current one")
        raise ProblemError(ErrorCode.ROUND_NOT_OPEN, f"round {number} is {state}, not open")
    if deadline <= utcnow():
        raise ProblemError(ErrorCode.ROUND_NOT_OPEN, f"round {number} passed its deadline "
                           f"{deadline.isoformat()}")
    if client_id not in facts.participants:
        raise ProblemError(ErrorCode.NOT_PARTICIPANT, f"client {client_id} was not sampled for round {number}")


def admit(services: Services, fid: str, number: int, client_id: str, idempotency_key: str | None) -> Admission:
    """The checks that need no body, in one SELECT; raises the refusal, if any, before the body is read."""
    facts = services.facts.round_facts(fid, number)
    mine = and_(UpdateRow.federation_id == fid, UpdateRow.round == number, UpdateRow.client_id == client_id)
    if idempotency_key is not None:
        mine = or_(mine, and_(UpdateRow.client_id == client_id, UpdateRow.idempotency_key == idempotency_key))
    columns: list[Any] = [FederationRow.status, RoundRow.state, RoundRow.deadline,
                          exists().where(mine).label("reported")]
    if facts is None:
        columns += [RoundRow.participants, RoundRow.input_model_version]
    query = (select(*columns).select_from(FederationRow)
             .outerjoin(RoundRow, and_(RoundRow.federation_id == FederationRow.id, RoundRow.number == number))
             .where(FederationRow.id == fid))
    with services.db.read() as session:
        found = session.execute(query).first()
        if found is not None and found.reported:
            return Admission(fid, number, client_id, facts, reported=True)
        if facts is None and found is not None and found.state is not None:
            participants = frozenset(found.participants)
            facts = services.facts.remember_round_facts(
                fid, number, RoundFacts(participants, len(found.participants), found.input_model_version))
        status = found.status if found is not None else None
        state = found.state if found is not None else None
        deadline = found.deadline if found is not None else None
        _check_round(session, fid, number, client_id, status, state, deadline, facts)
    return Admission(fid, number, client_id, facts, reported=False)


# ---------------------------------------------------------------------------------------------- validation


@contextmanager
def _lazy_session(services: Services) -> Iterator[Callable[[], Session]]:
    """A read session opened only if something asks for it (cache misses)."""
    with ExitStack() as stack:
        opened: list[Session] = []

        def get() -> Session:
            if not opened:
                opened.append(stack.enter_context(services.db.read()))
            return opened[0]

        yield get


def _previous_dims(services: Services, session: Callable[[], Session], fid: str, input_version: int) -> dict[str, int]:
    """Prototype dimension per level of the complete prototypes this round starts from (immutable)."""
    cached = services.facts.previous_dims(fid, input_version)
    if cached is None:
        previous = latest_prototype_row(session(), fid, at_most=input_version)
        dims = {level["name"]: int(level["dim"]) for level in previous.levels} if previous is not None else {}
        cached = services.facts.remember_previous_dims(fid, input_version, dims)
    return dict(cached)


def _expected_dims(services: Services, session: Callable[[], Session], fid: str, number: int, input_version: int,
                   levels: set[str] | None = None) -> dict[str, int]:
    """Prototype dimension per level: from the previous complete prototypes, else from accepted updates.

    A dimension, once an accepted update fixed it, never changes, so those seen are cached per process; the
    accepted updates are scanned only when ``levels`` names one not known yet.
    """
    dims = _previous_dims(services, session, fid, input_version)
    for level, d in (services.facts.round_dims(fid, number) or {}).items():
        dims.setdefault(level, d)
    if levels is None or levels <= dims.keys():
        return dims
    found: dict[str, int] = {}
    for accepted in session().scalars(select(UpdateRow.prototype_dims).where(UpdateRow.federation_id == fid,
                                                                              UpdateRow.round == number)):
        for level, d in accepted.items():
            found.setdefault(level, int(d))
    _remember_round_dims(services, fid, number, found)
    for level, d in found.items():
        dims.setdefault(level, d)
    return dims


def _remember_round_dims(services: Services, fid: str, number: int, dims: Mapping[str, int]) -> None:
    if not dims:
        return
    known = dict(services.facts.round_dims(fid, number) or {})
    if dims.keys() <= known.keys():
        return
    for level, d in dims.items():
        known.setdefault(level, int(d))
    services.facts.remember_round_dims(fid, number, known)


def _validate(services: Services, admission: Admission, body: Buffer) -> ValidatedUpdate:
    fid, number, facts = admission.fid, admission.number, admission.facts
    assert facts is not None
    with _lazy_session(services) as session:
        config = services.facts.config(fid)
        if config is None:
            config = federations.config_of(services, session(), fid)
        specs = services.facts.model_specs(fid, facts.input_model_version)
        if specs is None:
            specs = model_specs(services, session(), fid, facts.input_model_version)
        modalities = {m.name for m in config.modalities}

        def check(expected: Mapping[str, int]) -> ValidatedUpdate:
            return validate_update(body, specs=specs, num_classes=config.num_classes, modalities=modalities,
                                   expected_dims=expected, input_model_version=facts.input_model_version)

        expected = _expected_dims(services, session, fid, number, facts.input_model_version)
        checked = check(expected)
        if not checked.prototype_dims.keys() <= expected.keys():
            # A level no accepted update fixed, as far as this process knows: ask the database, check again.
            fuller = _expected_dims(services, session, fid, number, facts.input_model_version,
                                    set(checked.prototype_dims))
            if fuller.keys() != expected.keys():
                checked = check(fuller)
    return checked


# ---------------------------------------------------------------------------------------------- ingestion

@dataclass(eq=False)
class _Turn:
    """One ingest's write transaction, waiting for (or leading) a group commit."""

    work: Callable[[Session], Any]
    wake: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    result: Any = None
    error: BaseException | None = None


class _GroupCommit:
    """SQLite: the write transactions of concurrent ingests, committed together.

    SQLite admits one writer and holds its lock across the commit's WAL fsync, so concurrent ingests would
    queue for one commit (and one fsync) each, and a waiter polls SQLite's busy handler (sleeps of 1, 2, 5,
    10, ... ms). Here they queue on a lock of this process instead: the first one leads and commits every
    transaction queued meanwhile (up to ``limit``) in one ``BEGIN IMMEDIATE`` ... ``COMMIT``, each in its own
    SAVEPOINT, so one that fails (a conflict, a closed round) is rolled back alone. Nobody is answered before
    the commit that holds its row is durable; if that commit fails, every member of the group gets the error.
    """

    def __init__(self, database: Database, limit: int = 32) -> None:
        self.database = database
        self.limit = limit
        self._lock = threading.Lock()
        self._queue: list[_Turn] = []
        self._busy = False  # a leader is committing; while the queue is not empty, this is True

    def run(self, work: Callable[[Session], Any]) -> Any:
        turn = _Turn(work)
        with self._lock:
            self._queue.append(turn)
            lead = not self._busy
            self._busy = True
        if not lead:
            turn.wake.wait()  # woken when done, or to lead the next group (then first in the queue)
        if not turn.finished:
            self._lead()
        if turn.error is not None:
            raise turn.error
        return turn.result

    def _lead(self) -> None:
        with self._lock:
            group, self._queue = self._queue[:self.limit], self._queue[self.limit:]
        try:
            self._commit(group)
        finally:
            with self._lock:
                successor = self._queue[0] if self._queue else None
                if successor is None:
                    self._busy = False
            for turn in group:
                turn.finished = True
                turn.wake.set()
            if successor is not None:
                successor.wake.set()

    def _commit(self, group: list[_Turn]) -> None:
        try:
            with self.database.write() as session:
                for turn in group:
                    try:
                        with session.begin_nested():
                            turn.result = turn.work(session)
                            session.flush()
                    except Exception as exc:  # this one alone is rolled back; the caller gets its error
                        turn.error = exc
        except BaseException as exc:
            for turn in group:
                if turn.error is None:
                    turn.error, turn.result = exc, None
            if not isinstance(exc, Exception):
                raise


_GROUPS: weakref.WeakKeyDictionary[Database, _GroupCommit] = weakref.WeakKeyDictionary()
_GROUPS_GUARD = threading.Lock()


def _write_transaction(database: Database, work: Callable[[Session], Any]) -> Any:
    """Run ``work`` in a committed write transaction: grouped with concurrent ingests on SQLite."""
    if database.dialect != "sqlite":
        with database.write() as session:
            return work(session)
    with _GROUPS_GUARD:
        group = _GROUPS.get(database)
        if group is None:
            group = _GROUPS[database] = _GroupCommit(database)
    return group.run(work)


def _answer_reported(services: Services, admission: Admission, sha256: str,
                     idempotency_key: str | None) -> IngestResult | None:
    with services.db.read() as session:
        replay = _replay(session, admission.fid, admission.number, admission.client_id, sha256, idempotency_key)
    return IngestResult(replay, created=False) if replay is not None else None


def ingest_upload(services: Services, admission: Admission, upload: BlobUpload,
                  idempotency_key: str | None) -> IngestResult:
    """Accept or refuse an admitted update whose body is (being) written to ``upload``.

    Blocks until the body is in; the caller closes ``upload`` afterwards, whatever happened.
    """
    fid, number, client_id = admission.fid, admission.number, admission.client_id
    sha256, size = upload.wait_written()
    if admission.reported:
        answer = _answer_reported(services, admission, sha256, idempotency_key)
        if answer is not None:
            return answer
        admission = admit(services, fid, number, client_id, None)  # defensive: the admission has to hold
    facts = admission.facts
    assert facts is not None
    checked = _validate(services, admission, upload.view())
    upload.commit()
    now = utcnow()
    row = {"id": new_id("upd"), "federation_id": fid, "round": number, "client_id": client_id,
           "num_samples": checked.num_samples, "sha256": sha256, "size_bytes": size, "metrics": checked.metrics,
           "prototype_dims": checked.prototype_dims, "idempotency_key": idempotency_key, "received_at": now}

    def record(session: Session) -> int:
        received = session.execute(
            update(RoundRow)
            .where(RoundRow.federation_id == fid, RoundRow.number == number, RoundRow.state == RoundState.OPEN,
                   RoundRow.deadline > now)
            .values(received=RoundRow.received + 1)
            .returning(RoundRow.received)
        ).scalar_one_or_none()
        if received is None:
            raise _RoundClosedError
        session.execute(insert(UpdateRow).values(**row))
        # Posting an update is a sign of life too: a participant that trained longer than lease_s stays live
        # for the next round's sampling.
        renew_lease(session, federations.config_of(services, session, fid), client_id, now)
        emit(session, fid, EventType.UPDATE_RECEIVED, number,
             {"client_id": client_id, "num_samples": checked.num_samples, "received": received,
              "participants": facts.count})
        return int(received)

    try:
        received = _write_transaction(services.db, record)
    except (IntegrityError, _RoundClosedError):
        # A concurrent request won (the insert, or the last place before the round closed): answer as its
        # replay, or refuse.
        answer = _answer_reported(services, admission, sha256, idempotency_key)
        if answer is not None:
            return answer
        raise ProblemError(ErrorCode.ROUND_NOT_OPEN, f"round {number} closed while this update arrived") from None
    _remember_round_dims(services, fid, number, checked.prototype_dims)
    receipt = UpdateReceipt(id=row["id"], federation_id=fid, round=number, client_id=client_id,
                            num_samples=checked.num_samples, sha256=sha256, size_bytes=size, received_at=now)
    return IngestResult(receipt, created=True, round_complete=received >= facts.count)


def ingest(services: Services, fid: str, number: int, client_id: str, body: Buffer,
           idempotency_key: str | None, sha256: str | None = None) -> IngestResult:
    """Accept or refuse one update whose whole body is in memory (in-process callers, diagnostics).

    ``sha256`` is accepted for compatibility and ignored: the upload hashes what it writes.
    """
    del sha256
    admission = admit(services, fid, number, client_id, idempotency_key)
    upload = services.blobs.begin_upload(durable=not admission.reported)
    try:
        upload.feed([bytes(body)])
        upload.finish()
        return ingest_upload(services, admission, upload, idempotency_key)
    finally:
        upload.close()


def list_updates(services: Services, fid: str, number: int) -> list[UpdateReceipt]:
    with services.db.read() as session:
        federations.get_row(session, fid)
        rows = session.scalars(select(UpdateRow).where(UpdateRow.federation_id == fid, UpdateRow.round == number)
                               .order_by(UpdateRow.received_at, UpdateRow.id))
        return [receipt_of(r) for r in rows]


__all__ = ["Admission", "IngestResult", "RoundFacts", "admit", "ingest", "ingest_upload", "list_updates", "receipt_of"]
