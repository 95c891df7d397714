"""Whether a federation can open its next round and, when it cannot, why: computed on read from the clients'
leases and profiles, never stored.

Who counts (docs/api.md, "Semantics worth knowing"):

* *live*: not revoked and lease not expired (the client polled within ``lease_s``);
* *can train*: live and reported at least one modality; only these are ever sampled;
* *with no modality*: live, but reported an empty modality list (a client that lost every modality);
* *without a profile*: live (it polls) but has not reported its profile yet.

The next round opens, once model version 0 exists and no round is open or closing, when

* ``min_clients`` is **not set**: at least ``clients_per_round`` clients are live, whatever they hold (the
  population the federation was sized for is there), and at least one of them can train. The round samples
  ``min(clients_per_round, can train)`` participants, so clients that cannot train never hold a federation back;
* ``min_clients`` is **set**: at least ``min_clients`` live clients can train (the operator's explicit floor is
  honoured, and the reason names it).

The quorum is capped at the participants. The reason is the same text everywhere: ``status_reason`` of
``GET /v1/federations/{fid}``, the ``reason`` of a ``wait`` task, and the ``federation.waiting`` event that
the opener records whenever it changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from coordinator.clients.orm import ClientRow
from coordinator.model_versions.orm import ModelVersionRow
from coordinator.rounds.orm import RoundRow
from mfcpl.wire.schemas import FederationCreate, FederationStatus, RoundState


@dataclass(frozen=True)
class Population:
    """A federation's live clients now, by what they can do."""

    trainable: list[ClientRow] = field(default_factory=list)  # sorted by (name, id): the sampling order
    live: int = 0
    no_modality: int = 0
    no_profile: int = 0

    def details(self, *, live: bool = True, trainable: bool = False) -> str:
        parts = [f"{self.live} live"] if live else []
        if trainable:
            parts.append(f"{len(self.trainable)} can train")
        if self.no_modality:
            parts.append(f"{self.no_modality} with no modality")
        if self.no_profile:
            parts.append(f"{self.no_profile} without a profile yet")
        return f" ({', '.join(parts)})" if parts else ""


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str
    population: Population
    needed: int  # clients the rule asks for (live ones by default, ones that can train with min_clients)


def population(session: Session, fid: str, now: datetime) -> Population:
    rows = session.scalars(
        select(ClientRow).where(ClientRow.federation_id == fid, ClientRow.revoked.is_(False),
                                ClientRow.lease_expires_at > now)
    ).all()
    trainable = sorted((r for r in rows if r.modalities), key=lambda r: (r.name, r.id))
    no_modality = sum(1 for r in rows if r.modalities is not None and not r.modalities)
    no_profile = sum(1 for r in rows if r.modalities is None)
    return Population(trainable=trainable, live=len(rows), no_modality=no_modality, no_profile=no_profile)


def assess(config: FederationCreate, has_model: bool, pop: Population) -> Readiness:
    """Whether the next round can open with this population (see the module docstring), and why (not)."""
    can_train = len(pop.trainable)
    if config.min_clients is not None:
        needed = config.min_clients
        if not has_model:
            return Readiness(False, "no model version 0 uploaded yet", pop, needed)
        if can_train < needed:
            return Readiness(False, f"{can_train} of {needed} clients needed (min_clients) can train"
                             f"{pop.details()}", pop, needed)
    else:
        needed = config.clients_per_round
        if not has_model:
            return Readiness(False, "no model version 0 uploaded yet", pop, needed)
        if pop.live < needed:
            return Readiness(False, f"{pop.live} of {needed} clients needed (clients_per_round) are live"
                             f"{pop.details(live=False, trainable=True)}", pop, needed)
        if can_train == 0:
            return Readiness(False, f"none of the {pop.live} live clients can train{pop.details(live=False)}",
                             pop, needed)
    size = min(config.clients_per_round, can_train)
    return Readiness(True, f"ready: the next round opens with {size} of the {can_train} clients that can train",
                     pop, needed)


def readiness(session: Session, fid: str, config: FederationCreate, now: datetime) -> Readiness:
    has_model = session.scalar(select(exists().where(ModelVersionRow.federation_id == fid))) or False
    return assess(config, bool(has_model), population(session, fid, now))


def describe(session: Session, fid: str, status: FederationStatus, config: FederationCreate, now: datetime,
             max_close_attempts: int) -> str | None:
    """``status_reason``: why the federation is where it is now; None once it is completed or cancelled."""
    if status in (FederationStatus.COMPLETED, FederationStatus.CANCELLED):
        return None
    active = session.scalars(
        select(RoundRow).where(RoundRow.federation_id == fid,
                               RoundRow.state.in_([str(RoundState.OPEN), str(RoundState.CLOSING)]))
        .order_by(RoundRow.number.desc()).limit(1)
    ).first()
    if active is not None and active.state == RoundState.OPEN:
        return (f"round {active.number} open: {active.received} of {len(active.participants)} updates received "
                f"(quorum {active.quorum})")
    if active is not None:
        attempt = f"attempt {active.close_attempts} of {max_close_attempts}"
        last = f"; {active.failure_reason}" if active.failure_reason else ""
        return f"round {active.number} closing ({attempt}{last})"
    if status == FederationStatus.PAUSED:
        return "paused: no round opens until the federation is resumed"
    closed = session.scalar(select(func.count()).select_from(RoundRow).where(
        RoundRow.federation_id == fid, RoundRow.state == RoundState.CLOSED)) or 0
    if closed >= config.rounds:
        return f"all {config.rounds} rounds closed"
    return readiness(session, fid, config, now).reason
