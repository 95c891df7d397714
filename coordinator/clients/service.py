"""Client enrolment, profiles and leases."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coordinator.auth import new_client_token
from coordinator.clients.orm import ClientRow
from coordinator.core import Services
from coordinator.federations import service as federations
from coordinator.problems import ProblemError
from coordinator.timeutil import new_id, utcnow
from mfcpl.wire.errors import ErrorCode
from mfcpl.wire.schemas import Client, ClientEnrolled, ClientProfile, FederationCreate


def client_schema(row: ClientRow) -> Client:
    return Client(id=row.id, federation_id=row.federation_id, name=row.name, revoked=row.revoked,
                  modalities=row.modalities, class_counts=row.class_counts, num_samples=row.num_samples,
                  last_seen_at=row.last_seen_at, lease_expires_at=row.lease_expires_at, created_at=row.created_at)


def enroll(services: Services, fid: str, name: str) -> ClientEnrolled:
    token, token_hash = new_client_token()
    try:
        with services.db.write() as session:
            fed = federations.get_row(session, fid)
            if fed.status in federations.TERMINAL:
                raise ProblemError(ErrorCode.FEDERATION_NOT_RUNNING, f"federation {fid} is {fed.status}")
            row = ClientRow(id=new_id("cli"), federation_id=fid, name=name, token_hash=token_hash, revoked=False,
                            created_at=utcnow())
            session.add(row)
            session.flush()
    except IntegrityError as exc:
        raise ProblemError(ErrorCode.CONFLICT, f"a client named {name!r} is already enrolled in {fid}") from exc
    return ClientEnrolled(**client_schema(row).model_dump(), token=token)


def get_row(session: Session, fid: str, cid: str) -> ClientRow:
    row = session.get(ClientRow, cid)
    if row is None or row.federation_id != fid:
        raise ProblemError(ErrorCode.NOT_FOUND, f"federation {fid} has no client {cid}")
    return row


def get_client(services: Services, fid: str, cid: str) -> Client:
    with services.db.read() as session:
        return client_schema(get_row(session, fid, cid))


def list_clients(services: Services, fid: str) -> list[Client]:
    with services.db.read() as session:
        federations.get_row(session, fid)
        rows = session.scalars(select(ClientRow).where(ClientRow.federation_id == fid)
                               .order_by(ClientRow.created_at, ClientRow.id))
        return [client_schema(r) for r in rows]


def revoke(services: Services, fid: str, cid: str) -> Client:
    with services.db.write() as session:
        row = get_row(session, fid, cid)
        row.revoked = True
        row.lease_expires_at = None
        session.flush()
        return client_schema(row)


def check_profile(profile: ClientProfile, config: FederationCreate) -> None:
    declared = {m.name for m in config.modalities}
    unknown = sorted(set(profile.modalities) - declared)
    if unknown:
        raise ProblemError(ErrorCode.VALIDATION_ERROR, f"modality {unknown[0]!r} is not declared by the "
                           f"federation (declared: {sorted(declared)})")
    if len(set(profile.modalities)) != len(profile.modalities):
        raise ProblemError(ErrorCode.VALIDATION_ERROR, "modalities must be distinct")
    if len(profile.class_counts) != config.num_classes:
        raise ProblemError(ErrorCode.VALIDATION_ERROR, f"class_counts has {len(profile.class_counts)} entries; "
                           f"the federation has {config.num_classes} classes")


def lease_until(config: FederationCreate, now: datetime) -> datetime:
    return now + timedelta(seconds=config.lease_s)


def set_profile(services: Services, fid: str, cid: str, profile: ClientProfile) -> Client:
    with services.db.write() as session:
        config = federations.config_of(services, session, fid)
        check_profile(profile, config)
        row = get_row(session, fid, cid)
        now = utcnow()
        row.modalities = list(profile.modalities)
        row.class_counts = list(profile.class_counts)
        row.num_samples = profile.num_samples
        row.last_seen_at = now
        row.lease_expires_at = lease_until(config, now)
        session.flush()
        return client_schema(row)


def renew_lease(session: Session, config: FederationCreate, cid: str, now: datetime) -> None:
    session.execute(update(ClientRow).where(ClientRow.id == cid, ClientRow.revoked.is_(False))
                    .values(last_seen_at=now, lease_expires_at=lease_until(config, now)))
