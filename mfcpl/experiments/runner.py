"""Run one simulated federation: many clients, each with its own shard and token, over real HTTP.

The main process is the operator and the evaluator: it creates the federation through the SDK, enrols
every client, uploads model version 0, and, for each round the coordinator opens, hands the sampled
clients to a pool of worker processes. A worker acts as those clients: with the client's own token it
asks for its task, downloads the model and complete prototypes, trains and posts the update - the same
:func:`client_sdk.node.perform_task` an edge node runs. While the workers train round r+1, the main
process evaluates round r's model on the dev and test sets and records it on the coordinator.

``transport="inprocess"`` runs the same clients, sampling and aggregation functions without the server,
to measure what the service costs.

One round loop (:func:`_run_rounds`) drives both; a :class:`Transport` says how a round opens, trains, closes
and where its model lives: :class:`HttpTransport` (a coordinator, clients over HTTP) or
:class:`InProcessTransport` (the coordinator's sampling and aggregation functions called directly).
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from client_sdk.client import MfcplClient
from client_sdk.data.federated import FederatedDataset
from client_sdk.data.missing import MissingSummary, simulate_missing
from client_sdk.data.registry import load_federation
from mfcpl.experiments.config import ExperimentConfig, federation_config
from mfcpl.experiments.embedded import EmbeddedCoordinator
from mfcpl.experiments.results import RunResult, summarize_history
from mfcpl.wire.schemas import (
    EvaluationCreate,
    Federation,
    FederationCreate,
    FederationStatus,
    Normalization,
    RoundState,
)
from mfcpl.wire.tensors import decode_model, encode_model

Progress = Callable[[str], None]
"""Where progress lines go (``print`` by default). A callable that also has a ``status(line)`` method (the
terminal printer of mfcpl.experiments.cli) gets the per-round and waiting lines there, to redraw one line."""
Weights = dict[str, np.ndarray]


def _status(progress: Progress, line: str) -> None:
    """A line that the next one supersedes (round progress, waiting): one updating line on a terminal."""
    status = getattr(progress, "status", None)
    (status if callable(status) else progress)(line)


def _no_progress(line: str) -> None:
    pass


class DatasetError(ValueError):
    """The experiment's data set cannot be loaded as asked; the message says why (shown without a traceback)."""


def dataset_options(cfg: ExperimentConfig) -> dict[str, Any]:
    """The loader options this experiment sets. Only what it sets: a loader refuses options that do not apply
    to its data set (``alpha`` without a Dirichlet partition, ``subjects`` outside UCI-HAR) rather than ignore
    them."""
    options: dict[str, Any] = {"seed": cfg.seed}
    for key in ("alpha", "shards_per_subject", "subjects", "max_clients", "partition", "num_clients", "dev_fraction"):
        value = getattr(cfg, key)
        if value is not None:
            options[key] = value
    return options


def prepare_data(cfg: ExperimentConfig) -> tuple[FederatedDataset, MissingSummary, Normalization]:
    """The partition, its missing modalities and the feature standardisation, all drawn from ``cfg.seed``
    (the same for every method). Statistics come from what the clients hold after the missing-modality draw."""
    from client_sdk.data.normalize import normalize_federation

    try:
        federation = load_federation(cfg.dataset, data_dir=cfg.data_dir, **dataset_options(cfg))
    except (ValueError, FileNotFoundError) as exc:  # unknown name, bad folder, an option that does not apply
        raise DatasetError(f"data set {cfg.dataset!r}: {exc}") from exc
    rule = cfg.missing_mode if cfg.missing_rate > 0 else "none"
    federation, summary = simulate_missing(federation, rule, cfg.missing_rate, cfg.seed)
    federation, normalization = normalize_federation(federation, cfg.resolved_normalization())
    return federation, summary, normalization


# ---------------------------------------------------------------------------------------------------------
# Worker processes: each acts as whichever clients the main process hands it.

_W: dict[str, Any] = {}


def _worker_init(cfg_json: str, fc_json: str, base_url: str | None, device: str = "cpu") -> None:
    import torch

    torch.set_num_threads(1)
    cfg = ExperimentConfig.model_validate_json(cfg_json)
    federation, _, _ = prepare_data(cfg)
    from client_sdk.node import LocalModel

    _W["shards"] = {c.name: c.data for c in federation.clients}
    _W["local"] = LocalModel(FederationCreate.model_validate_json(fc_json), threads=1, device=device)
    _W["base_url"] = base_url
    _W["clients"] = {}


def _worker_train_http(fid: str, name: str, token: str, expected_round: int) -> dict[str, Any]:
    from client_sdk.node import perform_task
    from mfcpl.wire.schemas import TaskAction

    clients: dict[str, MfcplClient] = _W["clients"]
    if name not in clients:
        clients[name] = MfcplClient(_W["base_url"], token, timeout=120.0)
    client = clients[name]
    task = client.tasks.next(fid)
    if task.action != TaskAction.TRAIN or task.round != expected_round:
        raise RuntimeError(f"client {name}: expected to train round {expected_round}, got {task.model_dump()}")
    outcome = perform_task(client, fid, task, _W["shards"][name], _W["local"])
    return {"client": name, "metrics": outcome.metrics, "seconds": outcome.seconds}


def _worker_train_local(name: str, seed: int, model_version: int, model_bytes: bytes,
                        prototype_bytes: bytes | None) -> tuple[str, bytes, dict[str, float]]:
    from mfcpl.wire.tensors import decode_prototypes, encode_update

    local = _W["local"]
    weights = decode_model(model_bytes)
    local.load(model_version, "", weights)
    prototypes = decode_prototypes(prototype_bytes) if prototype_bytes is not None else None
    t0 = time.perf_counter()
    update = local.train_update(_W["shards"][name], local.config, weights, prototypes, seed, model_version)
    return name, encode_update(update), {"train": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------------------
# The main process: one round loop, two transports


@dataclass
class _Evaluator:
    federation: FederatedDataset
    config: FederationCreate
    device: str = "cpu"

    def __post_init__(self) -> None:
        from client_sdk.node import LocalModel

        self.local = LocalModel(self.config, threads=1, device=self.device)

    def __call__(self, weights: Weights) -> dict[str, dict[str, float]]:
        from client_sdk.torch_io import load_numpy_weights
        from client_sdk.trainer import evaluate

        load_numpy_weights(self.local.model, weights)
        n = self.config.num_classes
        return {
            "dev": evaluate(self.local.model, self.federation.dev, n, threads=1),
            "test": evaluate(self.local.model, self.federation.test, n, threads=1),
        }


def _initial_weights(config: FederationCreate, seed: int) -> Weights:
    from client_sdk.model import build_model
    from client_sdk.torch_io import model_to_numpy

    return model_to_numpy(build_model(config, seed=seed))


@dataclass(frozen=True)
class RunSetup:
    """What a transport needs to set a run up: the experiment, its federation config and data, model version 0."""

    cfg: ExperimentConfig
    config: FederationCreate
    federation: FederatedDataset
    trainable: list[str]  # names of the clients that can train, sorted
    initial_weights: Weights


@dataclass(frozen=True)
class OpenRound:
    number: int
    participants: list[str]  # client names


@dataclass(frozen=True)
class ClosedRound:
    state: str
    participants: int
    received: int
    fields: dict[str, Any]  # the transport's own history fields, after the common ones
    model: Any  # the transport's handle on the model the round produced; None when it produced none


class Transport(Protocol):
    """How the round loop reaches the clients and the aggregation."""

    name: str  # RunResult.transport
    label: str  # in the first progress line
    federation_id: str | None
    progress: Progress  # set by _run: where the transport reports set-up steps and waiting

    @property
    def worker_url(self) -> str | None:
        """The coordinator the worker processes talk to (None: they do not)."""

    def open(self, setup: RunSetup) -> None:
        """Set the run up (federation, clients, model version 0)."""

    def next_round(self, after: int) -> OpenRound | None:
        """The round after round ``after`` with its participants, once it is open; None when the run is over."""

    def start_round(self, pool: Pool, opened: OpenRound) -> None:
        """Hand the participants' training to the worker pool (returns at once)."""

    def finish_round(self, opened: OpenRound) -> ClosedRound:
        """Wait for the participants' updates and the aggregation."""

    def model_weights(self, model: Any) -> Weights:
        """The weights of a round's model (``ClosedRound.model``)."""

    def record_evaluation(self, number: int, model: Any, scores: dict[str, dict[str, float]]) -> None:
        """Keep a round's dev and test scores where the transport keeps results."""

    def final_model(self) -> bytes:
        """The last model, encoded (safetensors)."""

    def server_history(self) -> list[dict[str, Any]] | None:
        """The coordinator's per-round metrics (None without a coordinator)."""

    def close(self) -> None:
        """Release what ``open`` set up (also after a failure part-way)."""


def _run(cfg: ExperimentConfig, out_dir: str | Path, transport: Transport, *, workers: int, device: str,
         progress: Progress) -> RunResult:
    """Prepare the data, run every round through ``transport``, write ``out_dir``."""
    import torch

    torch.set_num_threads(1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    progress(f"setup: loading {cfg.dataset} (seed {cfg.seed}, {cfg.missing_mode}-level q={cfg.missing_rate}, "
             f"normalization {cfg.resolved_normalization()})")
    federation, summary, normalization = prepare_data(cfg)
    trainable = sorted(c.name for c in federation.clients if c.can_train)
    if not trainable:
        raise RuntimeError(f"no client can train at {cfg.missing_mode}-level q={cfg.missing_rate}")
    config = federation_config(cfg, federation, len(trainable), normalization)
    progress(f"{cfg.run_id()}{transport.label}: {len(federation.clients)} clients, {len(trainable)} can train; "
             f"{config.clients_per_round} per round, {cfg.rounds} rounds, {cfg.algorithm}")
    pool: Pool | None = None
    transport.progress = progress
    try:
        transport.open(RunSetup(cfg, config, federation, trainable, _initial_weights(config, cfg.seed)))
        progress(f"setup: starting {max(1, workers)} worker process(es); each loads the data before round 1")
        pool = mp.get_context("spawn").Pool(
            max(1, workers), initializer=_worker_init,
            initargs=(cfg.model_dump_json(), config.model_dump_json(), transport.worker_url, device))
        evaluator = _Evaluator(federation, config, device)
        progress(f"setup: done in {time.perf_counter() - started:.1f}s; round 1 of {cfg.rounds} starts")
        history = _run_rounds(cfg, transport, pool, evaluator, out, started, progress)
        final_model = transport.final_model()
        server_history = transport.server_history()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        transport.close()
    (out / "final_model.safetensors").write_bytes(final_model)
    result = summarize_history(
        cfg, history, wall_time_s=time.perf_counter() - started, transport=transport.name,
        missing=summary.to_dict(), trainable_clients=len(trainable), federation_id=transport.federation_id,
        device=device, data={**_data_record(federation, normalization), "lr": config.training.lr}, record_settings=True,
    )
    result.write(out, server_history=server_history)
    return result


def _data_record(federation: FederatedDataset, normalization: Normalization) -> dict[str, Any]:
    """What the result keeps about the data: the loader's record (partition, dev cut) and the normalization."""
    record = {k: v for k, v in federation.options.items() if isinstance(v, str | int | float | bool | list | None)}
    return {**record, "dataset": federation.name, "client_count": len(federation.clients),
            "normalization": normalization.mode}


def _run_rounds(cfg: ExperimentConfig, transport: Transport, pool: Pool, evaluator: _Evaluator, out: Path,
                started: float, progress: Progress) -> list[dict[str, Any]]:
    """Every round: its clients train while the previous round's model is evaluated; then it closes."""
    history: list[dict[str, Any]] = []
    pending: tuple[dict[str, Any], Any] | None = None  # (history entry, model) awaiting evaluation
    last_round = 0
    while (opened := transport.next_round(last_round)) is not None:
        round_started = time.perf_counter()
        transport.start_round(pool, opened)
        if pending is not None:  # evaluate the last round's model while the workers train this one
            _evaluate(transport, evaluator, *pending)
            progress(_progress_line(pending[0], cfg.rounds))
            _checkpoint(out, history)
            pending = None
        closed = transport.finish_round(opened)
        entry: dict[str, Any] = {
            "round": opened.number,
            "state": closed.state,
            "participants": closed.participants,
            "received": closed.received,
            "round_seconds": time.perf_counter() - round_started,
            "elapsed_seconds": time.perf_counter() - started,
            **closed.fields,
        }
        history.append(entry)
        last_round = opened.number
        _status(progress, _round_line(entry, cfg.rounds, [e["round_seconds"] for e in history]))
        if closed.model is not None and (opened.number % cfg.eval_every == 0 or opened.number >= cfg.rounds):
            pending = (entry, closed.model)
    if pending is not None:
        _evaluate(transport, evaluator, *pending)
        progress(_progress_line(pending[0], cfg.rounds))
    return history


def _evaluate(transport: Transport, evaluator: _Evaluator, entry: dict[str, Any], model: Any) -> None:
    weights = transport.model_weights(model)
    t0 = time.perf_counter()
    scores = evaluator(weights)
    eval_s = time.perf_counter() - t0
    transport.record_evaluation(entry["round"], model, scores)
    for split, metrics in scores.items():
        entry.update({f"{split}_{k}": v for k, v in metrics.items()})
    entry["eval_seconds"] = eval_s


def _train_fields(metrics: dict[str, float]) -> dict[str, float]:
    """The round's averaged client metrics as history fields, each named ``train_*`` once."""
    return {k if k.startswith("train_") else f"train_{k}": v for k, v in metrics.items()}


def _progress_line(entry: dict[str, Any], rounds: int) -> str:
    dev = entry.get("dev_macro_f1")
    test = entry.get("test_macro_f1")
    loss = entry.get("train_loss", entry.get("train_train_loss"))
    parts = [f"eval  {entry['round']:>4}/{rounds}", f"participants {entry['received']}/{entry['participants']}"]
    if loss is not None:
        parts.append(f"train loss {loss:.3f}")
    if dev is not None:
        parts.append(f"dev F1 {100 * dev:5.1f}")
    if test is not None:
        parts.append(f"test F1 {100 * test:5.1f}")
    parts.append(f"{entry['elapsed_seconds']:.0f}s")
    return " | ".join(parts)


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _eta(round_seconds: list[float], rounds_left: int) -> str:
    """Median round time x rounds left (the median: round 1 also waits for the workers to load)."""
    if rounds_left <= 0:
        return "0s"
    return _duration(statistics.median(round_seconds) * rounds_left) if round_seconds else "?"


def _round_line(entry: dict[str, Any], rounds: int, round_seconds: list[float]) -> str:
    """One line per closed round: its state, updates, train loss, time, elapsed and ETA."""
    loss = entry.get("train_loss", entry.get("train_train_loss"))
    parts = [f"round {entry['round']:>4}/{rounds} {entry['state']}",
             f"updates {entry['received']}/{entry['participants']}"]
    if loss is not None:
        parts.append(f"train loss {loss:.3f}")
    parts += [f"{entry['round_seconds']:.1f}s/round", f"elapsed {_duration(entry['elapsed_seconds'])}",
              f"ETA {_eta(round_seconds, rounds - entry['round'])}"]
    return " | ".join(parts)


def _checkpoint(out: Path, history: list[dict[str, Any]]) -> None:
    """The history so far, so a run that is cut off still leaves its curve (replaced atomically)."""
    import json

    tmp = out / "history.partial.json.tmp"
    tmp.write_text(json.dumps(history))
    tmp.replace(out / "history.partial.json")


# ---------------------------------------------------------------------------------------------------------
# HTTP transport: a coordinator (embedded unless a URL is given); the clients poll, download, train and post.


def run_experiment(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    *,
    server_url: str | None = None,
    admin_token: str | None = None,
    workers: int = 2,
    device: str = "cpu",
    progress: Progress = print,
) -> RunResult:
    """Run ``cfg`` through a coordinator over HTTP (embedded unless ``server_url``); write ``out_dir``."""
    transport = HttpTransport(Path(out_dir) / "coordinator", server_url, admin_token)
    return _run(cfg, out_dir, transport, workers=workers, device=device, progress=progress)


class HttpTransport:
    """The rounds as the coordinator opens and closes them; the main process is the operator over HTTP."""

    name = "http"
    label = ""

    def __init__(self, state_dir: Path, server_url: str | None = None, admin_token: str | None = None) -> None:
        self.state_dir = state_dir  # the embedded coordinator's database, blobs and log
        self.server_url = server_url
        self.admin_token = admin_token
        self.embedded: EmbeddedCoordinator | None = None
        self.admin: MfcplClient | None = None
        self.federation_id: str | None = None
        self.tokens: dict[str, str] = {}  # by client name
        self.names_by_id: dict[str, str] = {}
        self.jobs: list[AsyncResult[dict[str, Any]]] = []
        self.progress: Progress = _no_progress

    @property
    def worker_url(self) -> str | None:
        return self.server_url

    @property
    def fid(self) -> str:
        assert self.federation_id is not None, "open() first"
        return self.federation_id

    @property
    def client(self) -> MfcplClient:
        assert self.admin is not None, "open() first"
        return self.admin

    def open(self, setup: RunSetup) -> None:
        from client_sdk.node import client_profile

        if self.server_url is None:
            self.progress(f"setup: starting an embedded coordinator (state in {self.state_dir})")
            self.embedded = EmbeddedCoordinator(self.state_dir).start()
            self.server_url, self.admin_token = self.embedded.base_url, self.embedded.admin_token
            self.progress(f"setup: coordinator at {self.server_url}")
        self.admin = MfcplClient(self.server_url, self.admin_token, timeout=120.0)
        self.federation_id = self.admin.federations.create(setup.config).id
        self.admin.models.upload_initial(self.fid, setup.initial_weights)
        self.progress(f"setup: federation {self.fid} created, model v0 uploaded; enrolling "
                      f"{len(setup.federation.clients)} clients")
        for shard in setup.federation.clients:  # every client, also those without data: the coordinator samples
            enrolled = self.admin.clients.enroll(self.fid, shard.name)
            self.tokens[shard.name] = enrolled.token
            self.names_by_id[enrolled.id] = shard.name
            with MfcplClient(self.server_url, enrolled.token, timeout=60.0) as node:
                node.clients.report_profile(self.fid, client_profile(shard.data, setup.config.num_classes))
                node.tasks.next(self.fid)  # takes the lease
        self.progress(f"setup: {len(self.tokens)} clients enrolled with their profiles")

    def next_round(self, after: int) -> OpenRound | None:
        found = _wait_for_next_round(self.client, self.fid, after, report=lambda line: _status(self.progress, line))
        if found is None:
            return None
        number, participant_ids = found
        return OpenRound(number, [self.names_by_id[cid] for cid in participant_ids])

    def start_round(self, pool: Pool, opened: OpenRound) -> None:
        self.jobs = [pool.apply_async(_worker_train_http, (self.fid, name, self.tokens[name], opened.number))
                     for name in opened.participants]

    def finish_round(self, opened: OpenRound) -> ClosedRound:
        try:
            outcomes = [job.get() for job in self.jobs]
        except Exception:
            if self.client.federations.get(self.fid).status == FederationStatus.CANCELLED:
                raise FederationStopped(f"federation {self.fid} was cancelled during round {opened.number}") from None
            raise
        finally:
            self.jobs = []
        closed = _wait_closed(self.client, self.fid, opened.number)

        def total(key: str) -> float:
            return float(sum(o["seconds"].get(key, 0.0) for o in outcomes))

        fields = {
            "client_download_seconds": total("download"),
            "client_train_seconds": total("train"),
            "client_upload_seconds": total("upload"),
            **_train_fields(closed.train_metrics),
        }
        model = int(closed.output_model_version) if closed.state == RoundState.CLOSED else None
        return ClosedRound(str(closed.state), len(closed.participants), closed.received, fields, model)

    def model_weights(self, model: int) -> Weights:
        return decode_model(self.client.models.download_bytes(self.fid, model))

    def record_evaluation(self, number: int, model: int, scores: dict[str, dict[str, float]]) -> None:
        for split, metrics in scores.items():
            self.client.evaluations.create(self.fid, number,
                                           EvaluationCreate(split=split, metrics=metrics, model_version=model))

    def final_model(self) -> bytes:
        return encode_model(self.client.models.download(self.fid, "latest").weights)

    def server_history(self) -> list[dict[str, Any]]:
        return [m.model_dump(mode="json") for m in self.client.metrics.history(self.fid)]

    def close(self) -> None:
        if self.admin is not None:
            self.admin.close()
        if self.embedded is not None:
            self.embedded.stop()


WAIT_REPORT_AFTER_S = 2.0  # a wait for the next round shorter than this is not reported
WAIT_REPORT_EVERY_S = 10.0  # then: when the reason changes, and at least this often


class _WaitReporter:
    """Says why the next round has not opened yet: ``waiting: <status_reason>``, ``paused for 40 s``."""

    def __init__(self, report: Callable[[str], None] | None) -> None:
        self.report = report
        self.started = time.monotonic()
        self.last_line: str | None = None
        self.last_at = 0.0

    def __call__(self, fed: Federation, paused_since: float | None) -> None:
        now = time.monotonic()
        if self.report is None or now - self.started < WAIT_REPORT_AFTER_S:
            return
        if fed.status == FederationStatus.PAUSED and paused_since is not None:
            line = f"paused for {now - paused_since:.0f} s (stops after {PAUSE_LIMIT_S:.0f} s; resume to go on)"
            changed = self.last_line is None or not self.last_line.startswith("paused")
        else:
            line = f"waiting: {fed.status_reason or fed.status} ({now - self.started:.0f} s)"
            changed = self.last_line is None or self.last_line.rpartition(" (")[0] != line.rpartition(" (")[0]
        if changed or now - self.last_at >= WAIT_REPORT_EVERY_S:
            self.report(line)
            self.last_line, self.last_at = line, now


def _poll(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """``check()`` until it returns something other than None (backing off from 5 ms to 200 ms)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            return found
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise TimeoutError(f"{what} within {timeout_s}s")


_ENDED = ("ended",)

PAUSE_LIMIT_S = 600.0  # a run paused longer than this stops (the operator can resume and run it again)
OPEN_LIMIT_S = 600.0  # a round that does not open within this stops the run, with the coordinator's reason


class FederationStopped(RuntimeError):
    """The federation cannot go on: cancelled, paused past the limit, or no round opens (``reason`` says which)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _wait_for_next_round(admin: MfcplClient, fid: str, after: int, timeout_s: float = OPEN_LIMIT_S,
                         pause_limit_s: float = PAUSE_LIMIT_S, report: Callable[[str], None] | None = None,
                         ) -> tuple[int, list[str]] | None:
    """The next open round after ``after`` as (number, participant ids), or None when the federation completed.

    Raises :class:`FederationStopped` when it was cancelled, stayed paused for ``pause_limit_s``, or no round
    opened within ``timeout_s`` of waiting (the federation's own reason, when it gives one, is in the message).
    ``report`` hears why it still waits (after a couple of seconds; see :class:`_WaitReporter`).
    """
    paused_since: float | None = None
    last: Federation | None = None
    reporter = _WaitReporter(report)

    def check() -> tuple[Any, ...] | None:
        nonlocal paused_since, last
        fed = last = admin.federations.get(fid)
        if fed.status == FederationStatus.COMPLETED:
            return _ENDED
        if fed.status == FederationStatus.CANCELLED:
            raise FederationStopped(f"federation {fid} was cancelled after round {after}")
        if fed.status == FederationStatus.PAUSED:
            paused_since = paused_since if paused_since is not None else time.monotonic()
            if time.monotonic() - paused_since > pause_limit_s:
                raise FederationStopped(f"federation {fid} stayed paused for more than {pause_limit_s:.0f} s")
        else:
            paused_since = None
        if fed.current_round is not None and fed.current_round > after:
            rnd = admin.rounds.get(fid, fed.current_round)
            if rnd.state == RoundState.OPEN:
                return rnd.number, list(rnd.participants)
        reporter(fed, paused_since)
        return None

    try:
        found = _poll(check, timeout_s if pause_limit_s <= timeout_s else pause_limit_s,
                      f"no round opened after round {after}")
    except TimeoutError as exc:
        reason = f" ({last.status}: {last.status_reason})" if last is not None and last.status_reason else ""
        raise FederationStopped(f"{exc}{reason}") from exc
    return None if found is _ENDED else found


def _wait_closed(admin: MfcplClient, fid: str, number: int, timeout_s: float = 600.0) -> Any:
    def check() -> Any:
        rnd = admin.rounds.get(fid, number)
        return rnd if rnd.state in (RoundState.CLOSED, RoundState.FAILED) else None

    return _poll(check, timeout_s, f"round {number} did not close")


# ---------------------------------------------------------------------------------------------------------
# In-process transport: the same clients, sampling and aggregation functions, no server and no HTTP.


def run_experiment_inprocess(cfg: ExperimentConfig, out_dir: str | Path, *, workers: int = 2, device: str = "cpu",
                             progress: Progress = print) -> RunResult:
    """``run_experiment`` without the coordinator: the baseline that prices the service (HTTP, DB, blobs)."""
    return _run(cfg, out_dir, InProcessTransport(), workers=workers, device=device, progress=progress)


class InProcessTransport:
    """Rounds 1..cfg.rounds, sampled and aggregated here by the coordinator's own functions."""

    name = "inprocess"
    label = " (in-process)"
    federation_id: str | None = None

    def __init__(self) -> None:
        self.setup: RunSetup | None = None
        self.weights: Weights = {}
        self.model_bytes = b""
        self.strategy_state: Any = None  # the aggregation strategy's state, handed to the next round as is
        self.tables: Mapping[str, Any] | None = None  # the complete prototypes by level
        self.prototype_bytes: bytes | None = None
        self.jobs: list[AsyncResult[tuple[str, bytes, dict[str, float]]]] = []
        self.progress: Progress = _no_progress

    @property
    def worker_url(self) -> str | None:
        return None

    @property
    def run(self) -> RunSetup:
        assert self.setup is not None, "open() first"
        return self.setup

    def open(self, setup: RunSetup) -> None:
        self.setup = setup
        self.weights = setup.initial_weights
        self.model_bytes = encode_model(self.weights)

    def next_round(self, after: int) -> OpenRound | None:
        from coordinator.rounds.sampling import round_seed, sample_participants

        number = after + 1
        if number > self.run.cfg.rounds:
            return None
        chosen = sample_participants(self.run.trainable, self.run.config.clients_per_round,
                                     round_seed(self.run.cfg.seed, number))
        return OpenRound(number, chosen)

    def start_round(self, pool: Pool, opened: OpenRound) -> None:
        from coordinator.rounds.sampling import client_seed, round_seed

        rseed = round_seed(self.run.cfg.seed, opened.number)
        self.jobs = [pool.apply_async(_worker_train_local, (name, client_seed(rseed, name), opened.number - 1,
                                                            self.model_bytes, self.prototype_bytes))
                     for name in opened.participants]

    def finish_round(self, opened: OpenRound) -> ClosedRound:
        from coordinator.aggregation import aggregate_round, weighted_metrics
        from mfcpl.wire.tensors import decode_update, encode_prototypes

        results = sorted(job.get() for job in self.jobs)
        self.jobs = []
        t_agg = time.perf_counter()
        updates = [decode_update(body) for _, body, _ in results]
        sources = [(body, float(u.num_samples)) for (_, body, _), u in zip(results, updates, strict=True)]
        train_metrics = weighted_metrics([(u.metrics, float(u.num_samples)) for u in updates])
        aggregate = aggregate_round(self.run.config, sources, {k: v.dtype for k, v in self.weights.items()},
                                    global_weights=self.weights, state=self.strategy_state, previous=self.tables)
        self.weights, self.strategy_state = aggregate.weights, aggregate.state
        self.model_bytes = encode_model(self.weights)
        if aggregate.prototypes:  # as the coordinator: versioned with the model this round produced
            self.tables = aggregate.prototypes
            self.prototype_bytes = encode_prototypes(self.tables, opened.number)
        fields = {
            "client_train_seconds": float(sum(r[2]["train"] for r in results)),
            "aggregation_seconds": time.perf_counter() - t_agg,
            **_train_fields(train_metrics),
            **_prototype_diagnostics(self.tables),
        }
        return ClosedRound("closed", len(opened.participants), len(results), fields, self.weights)

    def model_weights(self, model: Weights) -> Weights:
        return model

    def record_evaluation(self, number: int, model: Weights, scores: dict[str, dict[str, float]]) -> None:
        pass  # the history entry is the only record

    def final_model(self) -> bytes:
        return self.model_bytes

    def server_history(self) -> None:
        return None

    def close(self) -> None:
        self.jobs = []


def _prototype_diagnostics(tables: Mapping[str, Any] | None) -> dict[str, float]:
    """Per level of the complete prototypes after this round: the classes covered and, over those classes,
    the mean pairwise cosine (near 1 = the prototype space collapsed; see docs/method.md's pitfalls)."""
    out: dict[str, float] = {}
    for level, table in (tables or {}).items():
        covered = np.asarray(table.vectors, dtype=np.float64)[table.coverage]
        out[f"prototype_classes_{level}"] = int(covered.shape[0])
        if covered.shape[0] >= 2:
            unit = covered / np.maximum(np.linalg.norm(covered, axis=1, keepdims=True), 1e-12)
            cos = unit @ unit.T
            out[f"prototype_cosine_{level}"] = float(cos[~np.eye(len(cos), dtype=bool)].mean())
    return out
