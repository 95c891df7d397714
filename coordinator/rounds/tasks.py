"""The pull-based task a client receives: train, wait, or done. Asking renews the client's lease."""

from __future__ import annotations

from sqlalchemy import select

from coordinator.clients.orm import ClientRow
from coordinator.clients.service import renew_lease
from coordinator.core import Services
from coordinator.federations import service as federations
from coordinator.federations.readiness import describe
from coordinator.model_versions.orm import ModelVersionRow
from coordinator.model_versions.service import latest_prototype_row
from coordinator.rounds.orm import RoundRow
from coordinator.rounds.sampling import client_seed
from coordinator.timeutil import utcnow
from coordinator.updates.orm import UpdateRow
from mfcpl.wire.schemas import FederationStatus, RoundState, Task, TaskAction

MIN_RETRY_S = 0.05


def next_task(services: Services, fid: str, client_id: str) -> Task:
    now = utcnow()
    tick = services.settings.tick_s
    with services.db.write() as session:
        fed = federations.get_row(session, fid)
        config = federations.config_of(services, session, fid)
        renew_lease(session, config, client_id, now)
        if fed.status in federations.TERMINAL:
            return Task(action=TaskAction.DONE, federation_id=fid, reason=f"federation {fed.status}")
        open_round = session.scalars(select(RoundRow).where(RoundRow.federation_id == fid,
                                                            RoundRow.state == RoundState.OPEN)
                                     .order_by(RoundRow.number.desc()).limit(1)).first()
        if open_round is None:
            # The federation's status_reason: what it waits for (model version 0, clients), a closing round.
            reason = describe(session, fid, FederationStatus(fed.status), config, now,
                              services.settings.max_close_attempts)
            return Task(action=TaskAction.WAIT, federation_id=fid, retry_after_s=tick, reason=reason)
        remaining = (open_round.deadline - now).total_seconds()
        retry = max(MIN_RETRY_S, min(tick, remaining))
        if client_id not in open_round.participants:
            # Nothing to do until the next round opens: one tick, not the deadline-driven short retry.
            modalities = session.scalar(select(ClientRow.modalities).where(ClientRow.id == client_id))
            reason = ("not sampled: this client reported no modality, so it cannot train"
                      if modalities is not None and not modalities else "not sampled for this round")
            return Task(action=TaskAction.WAIT, federation_id=fid, round=open_round.number,
                        retry_after_s=max(MIN_RETRY_S, tick), reason=reason)
        if remaining <= 0:
            return Task(action=TaskAction.WAIT, federation_id=fid, round=open_round.number,
                        retry_after_s=max(MIN_RETRY_S, tick), reason="the round's deadline has passed")
        reported = session.scalar(select(UpdateRow.id).where(UpdateRow.federation_id == fid,
                                                             UpdateRow.round == open_round.number,
                                                             UpdateRow.client_id == client_id))
        if reported is not None:
            return Task(action=TaskAction.WAIT, federation_id=fid, round=open_round.number, retry_after_s=retry,
                        reason="update received; waiting for the round to close")
        model = session.get(ModelVersionRow, (fid, open_round.input_model_version))
        prototypes = latest_prototype_row(session, fid, at_most=open_round.input_model_version)
        name = session.scalar(select(ClientRow.name).where(ClientRow.id == client_id)) or client_id
    assert model is not None
    return Task(
        action=TaskAction.TRAIN, federation_id=fid, round=open_round.number, model_version=model.version,
        model_sha256=model.sha256, prototype_version=prototypes.version if prototypes else None,
        prototype_sha256=prototypes.sha256 if prototypes else None, deadline=open_round.deadline,
        seed=client_seed(open_round.seed, name), algorithm=config.algorithm, training=config.training,
    )
