"""Run one simulated federation: many clients, each with its own shard and token, over real HTTP.

The main process is the operator and the evaluator: it creates the federation through the SDK, enrols
every client, uploads model version 0, and, for each round the coordinator opens, hands the sampled
clients to a pool of worker processes. A worker acts as those clients: with the client's own token it
asks for its task, downloads the model and complete prototypes, trains and posts the update - the same
:func:`client_sdk.node.perform_task` an edge node runs. While the workers train round r+1, the main
process evaluates round r's model on the dev and test sets and records it on the coordinator.

``transport="inprocess"`` runs the same clients, sampling and aggregation functions without the server,
to measure what the service costs.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import Any

import numpy as np

from client_sdk.client import MfcplClient
from client_sdk.data.federated import FederatedDataset
from client_sdk.data.missing import MissingSummary, simulate_missing
from client_sdk.data.registry import load_federation
from mfcpl.experiments.config import ExperimentConfig, federation_config
from mfcpl.experiments.embedded import EmbeddedCoordinator
from mfcpl.experiments.results import RunResult, summarize_history
from mfcpl.wire.schemas import EvaluationCreate, FederationCreate, FederationStatus, RoundState
from mfcpl.wire.tensors import decode_model, encode_model

Progress = Callable[[str], None]


def prepare_data(cfg: ExperimentConfig) -> tuple[FederatedDataset, MissingSummary]:
    """The partition and its missing modalities, both drawn from ``cfg.seed`` (same for every method)."""
    options: dict[str, Any] = {"seed": cfg.seed}
    if cfg.dataset == "uci_har":
        options["alpha"] = cfg.alpha
        options["shards_per_subject"] = cfg.shards_per_subject
        if cfg.subjects is not None:
            options["subjects"] = cfg.subjects
    if cfg.max_clients is not None:
        options["max_clients"] = cfg.max_clients
    federation = load_federation(cfg.dataset, data_dir=cfg.data_dir, **options)
    rule = cfg.missing_mode if cfg.missing_rate > 0 else "none"
    return simulate_missing(federation, rule, cfg.missing_rate, cfg.seed)


# ---------------------------------------------------------------------------------------------------------
# Worker processes: each acts as whichever clients the main process hands it.

_W: dict[str, Any] = {}


def _worker_init(cfg_json: str, fc_json: str, base_url: str | None, device: str = "cpu") -> None:
    import torch

    torch.set_num_threads(1)
    cfg = ExperimentConfig.model_validate_json(cfg_json)
    federation, _ = prepare_data(cfg)
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


# ---------------------------------------------------------------------------------------------------------
# The main process


@dataclass
class _Evaluator:
    federation: FederatedDataset
    config: FederationCreate
    device: str = "cpu"

    def __post_init__(self) -> None:
        from client_sdk.node import LocalModel

        self.local = LocalModel(self.config, threads=1, device=self.device)

    def __call__(self, weights: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
        from client_sdk.torch_io import load_numpy_weights
        from client_sdk.trainer import evaluate

        load_numpy_weights(self.local.model, weights)
        n = self.config.num_classes
        return {
            "dev": evaluate(self.local.model, self.federation.dev, n, threads=1),
            "test": evaluate(self.local.model, self.federation.test, n, threads=1),
        }


def _initial_weights(config: FederationCreate, seed: int) -> dict[str, np.ndarray]:
    from client_sdk.model import build_model
    from client_sdk.torch_io import model_to_numpy

    return model_to_numpy(build_model(config, seed=seed))


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
    import torch

    torch.set_num_threads(1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    federation, summary = prepare_data(cfg)
    trainable = [c for c in federation.clients if c.can_train]
    if not trainable:
        raise RuntimeError(f"no client can train at {cfg.missing_mode}-level q={cfg.missing_rate}")
    config = federation_config(cfg, federation, len(trainable))
    progress(f"{cfg.run_id()}: {len(federation.clients)} clients, {summary.clients_can_train} can train; "
             f"{config.clients_per_round} per round, {cfg.rounds} rounds, {cfg.algorithm}")
    embedded = None
    if server_url is None:
        embedded = EmbeddedCoordinator(out / "coordinator").start()
        server_url, admin_token = embedded.base_url, embedded.admin_token
    pool: Pool | None = None
    try:
        admin = MfcplClient(server_url, admin_token, timeout=120.0)
        fed = admin.federations.create(config)
        fid = fed.id
        weights0 = _initial_weights(config, cfg.seed)
        admin.models.upload_initial(fid, weights0)
        tokens: dict[str, str] = {}
        names_by_id: dict[str, str] = {}
        from client_sdk.node import client_profile

        for shard in federation.clients:
            enrolled = admin.clients.enroll(fid, shard.name)
            tokens[shard.name] = enrolled.token
            names_by_id[enrolled.id] = shard.name
            with MfcplClient(server_url, enrolled.token, timeout=60.0) as node:
                node.clients.report_profile(fid, client_profile(shard.data, config.num_classes))
                node.tasks.next(fid)  # takes the lease
        ctx = mp.get_context("spawn")
        pool = ctx.Pool(max(1, workers), initializer=_worker_init,
                        initargs=(cfg.model_dump_json(), config.model_dump_json(), server_url, device))
        evaluator = _Evaluator(federation, config, device)
        history: list[dict[str, Any]] = []
        pending: tuple[int, int] | None = None  # (round, model version) awaiting evaluation
        last_round = 0
        while True:
            current = _wait_for_next_round(admin, fid, last_round)
            if current is None:
                break
            number, participants = current
            round_started = time.perf_counter()
            jobs: list[AsyncResult[dict[str, Any]]] = [
                pool.apply_async(_worker_train_http, (fid, names_by_id[cid], tokens[names_by_id[cid]], number))
                for cid in participants
            ]
            if pending is not None:
                _evaluate_and_record(admin, fid, evaluator, pending, history)
                progress(_progress_line(history[-1], cfg.rounds))
                _checkpoint(out, history)
                pending = None
            outcomes = [job.get() for job in jobs]
            closed = _wait_closed(admin, fid, number)
            entry = _round_entry(closed, outcomes, time.perf_counter() - round_started, time.perf_counter() - started)
            history.append(entry)
            last_round = number
            if closed.state == RoundState.CLOSED and (number % cfg.eval_every == 0 or number >= cfg.rounds):
                pending = (number, int(closed.output_model_version))
        if pending is not None:
            _evaluate_and_record(admin, fid, evaluator, pending, history)
            progress(_progress_line(history[-1], cfg.rounds))
        final = admin.models.download(fid, "latest")
        (out / "final_model.safetensors").write_bytes(encode_model(final.weights))
        server_history = [m.model_dump(mode="json") for m in admin.metrics.history(fid)]
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if embedded is not None:
            embedded.stop()
    result = summarize_history(
        cfg, history, wall_time_s=time.perf_counter() - started, transport="http",
        missing=summary.to_dict(), trainable_clients=len(trainable), federation_id=fid, device=device,
    )
    result.write(out, server_history=server_history)
    return result


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


def _wait_for_next_round(admin: MfcplClient, fid: str, after: int, timeout_s: float = 600.0
                         ) -> tuple[int, list[str]] | None:
    """The next open round after ``after`` as (number, participant ids), or None when the federation ended."""

    def check() -> tuple[Any, ...] | None:
        fed = admin.federations.get(fid)
        if fed.status in (FederationStatus.COMPLETED, FederationStatus.CANCELLED):
            return _ENDED
        if fed.current_round is not None and fed.current_round > after:
            rnd = admin.rounds.get(fid, fed.current_round)
            if rnd.state == RoundState.OPEN:
                return rnd.number, list(rnd.participants)
        return None

    found = _poll(check, timeout_s, f"no round opened after round {after}")
    return None if found is _ENDED else found


def _wait_closed(admin: MfcplClient, fid: str, number: int, timeout_s: float = 600.0) -> Any:
    def check() -> Any:
        rnd = admin.rounds.get(fid, number)
        return rnd if rnd.state in (RoundState.CLOSED, RoundState.FAILED) else None

    return _poll(check, timeout_s, f"round {number} did not close")


def _evaluate_and_record(admin: MfcplClient, fid: str, evaluator: _Evaluator, pending: tuple[int, int],
                         history: list[dict[str, Any]]) -> None:
    number, version = pending
    weights = decode_model(admin.models.download_bytes(fid, version))
    t0 = time.perf_counter()
    scores = evaluator(weights)
    eval_s = time.perf_counter() - t0
    for split, metrics in scores.items():
        admin.evaluations.create(fid, number, EvaluationCreate(split=split, metrics=metrics, model_version=version))
    entry = next(e for e in reversed(history) if e["round"] == number)
    for split, metrics in scores.items():
        for k, v in metrics.items():
            entry[f"{split}_{k}"] = v
    entry["eval_seconds"] = eval_s


def _round_entry(closed: Any, outcomes: list[dict[str, Any]], round_s: float, elapsed_s: float) -> dict[str, Any]:
    def total(key: str) -> float:
        return float(sum(o["seconds"].get(key, 0.0) for o in outcomes))

    entry: dict[str, Any] = {
        "round": closed.number,
        "state": str(closed.state),
        "participants": len(closed.participants),
        "received": closed.received,
        "round_seconds": round_s,
        "elapsed_seconds": elapsed_s,
        "client_download_seconds": total("download"),
        "client_train_seconds": total("train"),
        "client_upload_seconds": total("upload"),
    }
    entry.update(_train_fields(closed.train_metrics))
    return entry


def _train_fields(metrics: dict[str, float]) -> dict[str, float]:
    """The round's averaged client metrics as history fields, each named ``train_*`` once."""
    return {k if k.startswith("train_") else f"train_{k}": v for k, v in metrics.items()}


def _progress_line(entry: dict[str, Any], rounds: int) -> str:
    dev = entry.get("dev_macro_f1")
    test = entry.get("test_macro_f1")
    loss = entry.get("train_loss", entry.get("train_train_loss"))
    parts = [f"round {entry['round']:>4}/{rounds}", f"participants {entry['received']}/{entry['participants']}"]
    if loss is not None:
        parts.append(f"train loss {loss:.3f}")
    if dev is not None:
        parts.append(f"dev F1 {100 * dev:5.1f}")
    if test is not None:
        parts.append(f"test F1 {100 * test:5.1f}")
    parts.append(f"{entry['elapsed_seconds']:.0f}s")
    return " | ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# In-process transport: the same clients, sampling and aggregation functions, no server and no HTTP.


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


def run_experiment_inprocess(cfg: ExperimentConfig, out_dir: str | Path, *, workers: int = 2, device: str = "cpu",
                             progress: Progress = print) -> RunResult:
    """``run_experiment`` without the coordinator: the baseline that prices the service (HTTP, DB, blobs)."""
    import torch

    from coordinator.aggregation import aggregate_round, weighted_metrics
    from coordinator.rounds.sampling import client_seed, round_seed, sample_participants
    from mfcpl.wire.tensors import decode_update, encode_prototypes

    torch.set_num_threads(1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    federation, summary = prepare_data(cfg)
    trainable = sorted(c.name for c in federation.clients if c.can_train)
    if not trainable:
        raise RuntimeError(f"no client can train at {cfg.missing_mode}-level q={cfg.missing_rate}")
    config = federation_config(cfg, federation, len(trainable))
    progress(f"{cfg.run_id()} (in-process): {len(federation.clients)} clients, {len(trainable)} can train")
    weights = _initial_weights(config, cfg.seed)
    model_bytes = encode_model(weights)
    momentum = None
    tables = None
    prototype_bytes: bytes | None = None
    evaluator = _Evaluator(federation, config, device)
    history: list[dict[str, Any]] = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(max(1, workers), initializer=_worker_init,
                  initargs=(cfg.model_dump_json(), config.model_dump_json(), None, device)) as pool:
        pending: tuple[dict[str, Any], dict[str, np.ndarray]] | None = None  # (entry, weights) to evaluate
        for number in range(1, cfg.rounds + 1):
            round_started = time.perf_counter()
            rseed = round_seed(cfg.seed, number)
            chosen = sample_participants(trainable, config.clients_per_round, rseed)
            jobs = [pool.apply_async(_worker_train_local,
                                     (name, client_seed(rseed, name), number - 1, model_bytes, prototype_bytes))
                    for name in chosen]
            if pending is not None:  # evaluate the last round's model while the workers train this one
                _evaluate_inline(evaluator, *pending)
                progress(_progress_line(pending[0], cfg.rounds))
                _checkpoint(out, history)
                pending = None
            results = sorted(job.get() for job in jobs)
            t_agg = time.perf_counter()
            updates = [decode_update(body) for _, body, _ in results]
            sources = [(body, float(u.num_samples)) for (_, body, _), u in zip(results, updates, strict=True)]
            train_metrics = weighted_metrics([(u.metrics, float(u.num_samples)) for u in updates])
            aggregate = aggregate_round(config, sources, {k: v.dtype for k, v in weights.items()},
                                        global_weights=weights, momentum=momentum, previous=tables)
            weights, momentum = aggregate.weights, aggregate.momentum
            model_bytes = encode_model(weights)
            if aggregate.prototypes:  # as the coordinator: versioned with the model this round produced
                tables = aggregate.prototypes
                prototype_bytes = encode_prototypes(tables, number)
            agg_s = time.perf_counter() - t_agg
            entry: dict[str, Any] = {
                "round": number, "state": "closed", "participants": len(chosen), "received": len(results),
                "round_seconds": time.perf_counter() - round_started,
                "elapsed_seconds": time.perf_counter() - started,
                "client_train_seconds": float(sum(r[2]["train"] for r in results)),
                "aggregation_seconds": agg_s,
                **_train_fields(train_metrics),
                **_prototype_diagnostics(tables),
            }
            history.append(entry)
            if number % cfg.eval_every == 0 or number == cfg.rounds:
                pending = (entry, weights)
        if pending is not None:
            _evaluate_inline(evaluator, *pending)
            progress(_progress_line(pending[0], cfg.rounds))
    (out / "final_model.safetensors").write_bytes(model_bytes)
    result = summarize_history(cfg, history, wall_time_s=time.perf_counter() - started, transport="inprocess",
                               missing=summary.to_dict(), trainable_clients=len(trainable), device=device)
    result.write(out)
    return result


def _prototype_diagnostics(tables: dict[str, Any] | None) -> dict[str, float]:
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


def _evaluate_inline(evaluator: _Evaluator, entry: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
    t0 = time.perf_counter()
    for split, metrics in evaluator(weights).items():
        entry.update({f"{split}_{k}": v for k, v in metrics.items()})
    entry["eval_seconds"] = time.perf_counter() - t0


def _checkpoint(out: Path, history: list[dict[str, Any]]) -> None:
    """The history so far, so a run that is cut off still leaves its curve (replaced atomically)."""
    import json

    tmp = out / "history.partial.json.tmp"
    tmp.write_text(json.dumps(history))
    tmp.replace(out / "history.partial.json")
