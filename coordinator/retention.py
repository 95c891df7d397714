"""Blob retention: which blobs may go, and the garbage collector that deletes them.

Policy (docs/operations.md, "Blob retention"). A stored blob is *pinned*, and never deleted, while any of these
rows names its sha256 (identical bytes share one blob, so one pin keeps it for every row):

* a model version (``sha256``) or its strategy state (``momentum_sha256``), and a prototype set, while the row
  exists. With ``keep_model_versions = N > 0`` the rows of old versions are deleted first: every version is
  kept that is version 0, one of the newest N, or the input of a round that is not closed or failed; a
  prototype set is kept when it belongs to a kept version or is the newest set at or below a kept version (the
  set a task or a close of that version uses). A deleted version answers 404 ``not_found``; the round that
  produced it still names it (``output_model_version``) and its events stay.
* an update of a round that is open or closing, or that closed or failed less than ``gc_update_grace_s`` ago.
  Update rows stay for ever (receipts, replays and metrics need only the row); after the grace their bytes go.

Every other blob (update blobs of old rounds, blobs of deleted versions, orphans of refused uploads or lost
races) is deleted once it is older than ``gc_grace_s``, counted from its last write: a put of bytes already
stored refreshes them, so an ingest or a close that is about to commit a row naming a blob is never robbed of
it. Idempotency keys older than ``idempotency_ttl_s`` are deleted too.

Safe on several replicas at once: row deletions are guarded statements (re-checked in the ``DELETE``), and each
batch of blobs is re-checked against the database in a transaction right before the store deletes it (the
``db`` store's DELETE joins that transaction; the ``fs`` store renames the file aside, checks its mtime, then
unlinks it). Two collectors deleting the same blob delete it once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, exists, func, or_, select
from sqlalchemy.orm import Session

from coordinator.core import Services
from coordinator.idempotency import forget_expired
from coordinator.model_versions.orm import ModelVersionRow, PrototypeSetRow
from coordinator.rounds.orm import RoundRow
from coordinator.timeutil import utcnow
from coordinator.updates.orm import UpdateRow
from mfcpl.wire.schemas import RoundState

log = logging.getLogger("mfcpl.retention")

FINISHED_ROUNDS = (RoundState.CLOSED, RoundState.FAILED)
BATCH = 200


# ---------------------------------------------------------------------------------------------- pure policy


@dataclass(frozen=True)
class VersionPlan:
    """What to delete of one federation's model versions and prototype sets."""

    versions: tuple[int, ...]
    prototype_sets: tuple[int, ...]


def kept_versions(versions: Iterable[int], keep: int, live_inputs: Iterable[int]) -> set[int]:
    """Version 0, the newest ``keep`` and every input of a live round (``keep = 0``: all of them)."""
    ordered = sorted(set(versions))
    if keep <= 0:
        return set(ordered)
    return ({0} & set(ordered)) | set(ordered[-keep:]) | (set(live_inputs) & set(ordered))


def plan_versions(versions: Iterable[int], prototype_sets: Iterable[int], keep: int,
                  live_inputs: Iterable[int]) -> VersionPlan:
    versions = sorted(set(versions))
    kept = kept_versions(versions, keep, live_inputs)
    sets = sorted(set(prototype_sets))
    kept_sets = set()
    for version in kept:
        below = [s for s in sets if s <= version]
        if below:
            kept_sets.add(below[-1])
    return VersionPlan(tuple(v for v in versions if v not in kept), tuple(s for s in sets if s not in kept_sets))


def collectable(stored: Iterable[tuple[str, datetime]], pinned: set[str], written_before: datetime) -> list[str]:
    """The blobs nothing pins that were last written before ``written_before``."""
    return [sha256 for sha256, written_at in stored if sha256 not in pinned and written_at < written_before]


# ---------------------------------------------------------------------------------------------- the collector


@dataclass
class GcReport:
    dry_run: bool = False
    model_versions_deleted: int = 0
    prototype_sets_deleted: int = 0
    idempotency_keys_deleted: int = 0
    blobs_stored: int = 0
    blobs_referenced: int = 0
    blobs_too_young: int = 0  # unreferenced, but written less than gc_grace_s ago
    blobs_deleted: int = 0
    bytes_freed: int = 0
    temporaries_deleted: int = 0
    deleted: list[str] = field(default_factory=list, repr=False)  # sha256 of the blobs deleted

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "deleted"}


def _pinned_update_round(update_grace_cutoff: datetime) -> Any:
    """The round of an update row pins its blob: not finished, or finished after the cutoff."""
    return exists().where(RoundRow.federation_id == UpdateRow.federation_id, RoundRow.number == UpdateRow.round,
                          or_(RoundRow.state.notin_([str(s) for s in FINISHED_ROUNDS]), RoundRow.closed_at.is_(None),
                              RoundRow.closed_at >= update_grace_cutoff))


def referenced(session: Session, shas: Sequence[str], update_grace_cutoff: datetime) -> set[str]:
    """Those of ``shas`` that a row pins now (the policy above, in SQL)."""
    found: set[str] = set()
    if not shas:
        return found
    for column in (ModelVersionRow.sha256, ModelVersionRow.momentum_sha256, PrototypeSetRow.sha256):
        found.update(s for s in session.scalars(select(column).where(column.in_(shas))) if s is not None)
    found.update(session.scalars(select(UpdateRow.sha256).where(UpdateRow.sha256.in_(shas),
                                                                _pinned_update_round(update_grace_cutoff))))
    return found


def _live_inputs(session: Session) -> dict[str, set[int]]:
    inputs: dict[str, set[int]] = {}
    rows = session.execute(select(RoundRow.federation_id, RoundRow.input_model_version)
                           .where(RoundRow.state.notin_([str(s) for s in FINISHED_ROUNDS])))
    for fid, version in rows:
        inputs.setdefault(fid, set()).add(version)
    return inputs


def plan_all(session: Session, keep: int) -> dict[str, VersionPlan]:
    """Each federation's version plan (empty when ``keep = 0``)."""
    if keep <= 0:
        return {}
    versions: dict[str, list[int]] = {}
    for fid, version in session.execute(select(ModelVersionRow.federation_id, ModelVersionRow.version)):
        versions.setdefault(fid, []).append(version)
    sets: dict[str, list[int]] = {}
    for fid, version in session.execute(select(PrototypeSetRow.federation_id, PrototypeSetRow.version)):
        sets.setdefault(fid, []).append(version)
    inputs = _live_inputs(session)
    plans = {fid: plan_versions(vs, sets.get(fid, []), keep, inputs.get(fid, set())) for fid, vs in versions.items()}
    return {fid: plan for fid, plan in plans.items() if plan.versions or plan.prototype_sets}


def _prune(services: Services, fid: str, plan: VersionPlan, keep: int) -> tuple[int, int]:
    """Delete the planned rows. Each DELETE re-checks what may have changed since the plan: a version must still
    be below the newest ``keep`` and no live round's input, a prototype set below the newest set and no live
    round's input. (A round opens on the newest version, so a round opened since the plan pins nothing planned.)
    A concurrent collector's DELETE of the same rows matches nothing."""
    live_input = exists().where(RoundRow.federation_id == fid,
                                RoundRow.state.notin_([str(s) for s in FINISHED_ROUNDS]))
    with services.db.write() as session:
        newest = session.scalar(select(func.max(ModelVersionRow.version)).where(ModelVersionRow.federation_id == fid))
        newest_set = session.scalar(select(func.max(PrototypeSetRow.version))
                                    .where(PrototypeSetRow.federation_id == fid))
        versions = [v for v in plan.versions if newest is not None and 0 < v <= newest - keep]
        sets = [v for v in plan.prototype_sets if newest_set is not None and v < newest_set]
        deleted_versions = session.execute(
            delete(ModelVersionRow).where(ModelVersionRow.federation_id == fid, ModelVersionRow.version.in_(versions),
                                          ~live_input.where(RoundRow.input_model_version == ModelVersionRow.version))
        ) if versions else None
        deleted_sets = session.execute(
            delete(PrototypeSetRow).where(PrototypeSetRow.federation_id == fid, PrototypeSetRow.version.in_(sets),
                                          ~live_input.where(RoundRow.input_model_version == PrototypeSetRow.version))
        ) if sets else None
    return _rowcount(deleted_versions), _rowcount(deleted_sets)


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount or 0) if result is not None else 0


def collect_garbage(services: Services, now: datetime | None = None, *, dry_run: bool = False) -> GcReport:
    """Apply the retention policy once; ``now`` may be moved forward (tests). Safe to run concurrently."""
    settings = services.settings
    now = now or utcnow()
    report = GcReport(dry_run=dry_run)
    written_before = now - timedelta(seconds=settings.gc_grace_s)
    update_cutoff = now - timedelta(seconds=settings.gc_update_grace_s)
    keep = settings.keep_model_versions

    # 1. Rows: expired idempotency keys, model versions and prototype sets past keep_model_versions.
    with services.db.read() as session:
        plans = plan_all(session, keep)
    pruned: set[tuple[str, int]] = set()
    for fid, plan in plans.items():
        if dry_run:
            report.model_versions_deleted += len(plan.versions)
            report.prototype_sets_deleted += len(plan.prototype_sets)
            pruned |= {(fid, v) for v in plan.versions}
            continue
        versions, sets = _prune(services, fid, plan, keep)
        report.model_versions_deleted += versions
        report.prototype_sets_deleted += sets
    if not dry_run:
        report.idempotency_keys_deleted = forget_expired(services, now)

    # 2. Blobs: listed first, then the pins read, so a blob stored after the listing is not even a candidate.
    stored = services.blobs.stored()
    report.blobs_stored = len(stored)
    sizes = {blob.sha256: blob.size_bytes for blob in stored}
    shas = list(sizes)
    pinned: set[str] = set()
    with services.db.read() as session:
        for start in range(0, len(shas), BATCH):
            pinned |= referenced(session, shas[start:start + BATCH], update_cutoff)
        if dry_run and plans:  # what the pruning would unpin
            pinned -= _only_pruned(session, plans, pinned, update_cutoff)
    report.blobs_referenced = len(pinned)
    candidates = collectable(((b.sha256, b.written_at) for b in stored), pinned, written_before)
    report.blobs_too_young = len(stored) - len(pinned) - len(candidates)
    if dry_run:
        report.blobs_deleted = len(candidates)
        report.bytes_freed = sum(sizes[s] for s in candidates)
        report.deleted = candidates
        return report

    # 3. Delete, a batch at a time: re-check the references in a transaction, then the store deletes (the db
    #    store's DELETE joins the transaction; the fs store unlinks a file only if it was not re-written).
    for start in range(0, len(candidates), BATCH):
        batch = candidates[start:start + BATCH]
        with services.db.unit_of_work() as session:
            live = referenced(session, batch, update_cutoff)
            for sha256 in batch:
                if sha256 in live:
                    continue
                freed = services.blobs.delete(sha256, written_before)
                if freed is not None:
                    report.blobs_deleted += 1
                    report.bytes_freed += freed
                    report.deleted.append(sha256)
    report.temporaries_deleted = services.blobs.remove_temporaries(written_before)
    if report.blobs_deleted or report.model_versions_deleted or report.temporaries_deleted:
        log.info("garbage collection: %s", report.summary())
    return report


def _only_pruned(session: Session, plans: dict[str, VersionPlan], pinned: set[str],
                 update_cutoff: datetime) -> set[str]:
    """Of ``pinned``, the blobs that only rows the plans would delete name (for a dry run)."""
    doomed: set[str] = set()
    kept_rows: set[str] = set()
    for fid, version, sha256, momentum in session.execute(
            select(ModelVersionRow.federation_id, ModelVersionRow.version, ModelVersionRow.sha256,
                   ModelVersionRow.momentum_sha256)):
        target = doomed if fid in plans and version in plans[fid].versions else kept_rows
        target.update(s for s in (sha256, momentum) if s)
    for fid, version, sha256 in session.execute(
            select(PrototypeSetRow.federation_id, PrototypeSetRow.version, PrototypeSetRow.sha256)):
        (doomed if fid in plans and version in plans[fid].prototype_sets else kept_rows).add(sha256)
    doomed &= pinned
    doomed -= kept_rows
    if doomed:
        doomed -= set(session.scalars(select(UpdateRow.sha256).where(UpdateRow.sha256.in_(doomed),
                                                                     _pinned_update_round(update_cutoff))))
    return doomed


async def run_periodically(services: Services) -> None:
    """The coordinator's collector task: every ``gc_interval_s`` (jittered, so replicas spread out)."""
    interval = services.settings.gc_interval_s
    while True:
        await asyncio.sleep(interval * random.uniform(0.9, 1.1))
        try:
            await asyncio.to_thread(collect_garbage, services)
        except Exception:  # a failed run (database blip, ...) is retried at the next interval
            log.exception("garbage collection failed")
