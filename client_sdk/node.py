"""The edge-node runner: poll the coordinator for tasks, train locally, post updates; keep going.

``mfcpl client run --server URL --token T --federation FID --data uci_har:s01_k0`` (or a feature
file) runs one node. It survives coordinator restarts and network errors (backing off),
refused late updates (it logs them and asks for the next task) and ends when the federation completes.
:func:`perform_task` is the one training step, shared with the experiment runner.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from client_sdk.client import MfcplClient
from client_sdk.data.arrays import MultimodalArrays
from client_sdk.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    MfcplError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
)
from mfcpl.wire.schemas import ClientProfile, FederationCreate, Task, TaskAction, UpdateReceipt
from mfcpl.wire.tensors import PrototypeTable, Update

log = logging.getLogger("mfcpl.node")

ENV_FEDERATION = "MFCPL_FEDERATION_ID"
EXIT_DATA_MISMATCH = 4  # the node's data does not fit the federation's modalities, shapes or classes


@dataclass
class TaskOutcome:
    receipt: UpdateReceipt
    metrics: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)


class LocalModel:
    """The node's model object, built once from the federation's config and reloaded with each version."""

    def __init__(self, config: FederationCreate, threads: int = 1, device: str = "cpu") -> None:
        from client_sdk.model import build_model

        self.config = config
        self.threads = threads
        self.model = build_model(config).to(device)
        self.loaded: tuple[int, str] | None = None

    def load(self, version: int, sha256: str, weights: dict[str, np.ndarray]) -> None:
        from client_sdk.torch_io import load_numpy_weights

        load_numpy_weights(self.model, weights)
        self.loaded = (version, sha256)

    def train_update(self, data: MultimodalArrays, config: FederationCreate, global_weights: dict[str, np.ndarray],
                     prototypes: dict[str, PrototypeTable] | None, seed: int, base_model_version: int,
                     extra_metrics: dict[str, float] | None = None) -> Update:
        """Local training from the loaded global weights, packed as the update to post."""
        from client_sdk.trainer import train_local

        result = train_local(self.model, data, config, prototypes, seed=seed, global_weights=global_weights,
                             threads=self.threads)
        self.loaded = None  # the model now holds local weights
        return Update(weights=result.weights, num_samples=result.num_samples, base_model_version=base_model_version,
                      prototypes=result.prototypes, metrics={**result.metrics, **(extra_metrics or {})})


def perform_task(
    client: MfcplClient, fid: str, task: Task, data: MultimodalArrays, local: LocalModel,
    *, evaluate_local: bool = False,
) -> TaskOutcome:
    """Download the task's model and complete prototypes, train on ``data``, post the update.

    With ``evaluate_local``, the received global model is first evaluated on ``data`` and the update's
    metrics also carry ``local_eval_accuracy``, ``local_eval_macro_f1`` and ``local_eval_loss`` (averaged
    over the round's clients by the coordinator, like the training metrics).
    """
    from client_sdk.trainer import evaluate

    assert task.action == TaskAction.TRAIN and task.round is not None and task.model_version is not None
    t0 = time.perf_counter()
    download = client.models.download(fid, task.model_version, expected_sha256=task.model_sha256)
    local.load(download.version.version, download.version.sha256, download.weights)
    prototypes = None
    if task.prototype_version is not None:
        prototypes = client.prototypes.download(fid, task.prototype_version, expected_sha256=task.prototype_sha256)
    t_downloaded = time.perf_counter()
    config = local.config
    if task.training is not None:
        config = config.model_copy(update={"training": task.training})
    local_eval: dict[str, float] = {}
    if evaluate_local and len(data) > 0:
        scores = evaluate(local.model, data, config.num_classes, threads=local.threads)
        local_eval = {f"local_eval_{k}": v for k, v in scores.items() if k in ("accuracy", "macro_f1", "loss")}
    t1 = time.perf_counter()
    update = local.train_update(data, config, download.weights, prototypes, int(task.seed or 0), task.model_version,
                                local_eval)
    t2 = time.perf_counter()
    receipt = client.updates.submit(fid, task.round, update)
    t3 = time.perf_counter()
    seconds = {"download": t_downloaded - t0, "evaluate": t1 - t_downloaded, "train": t2 - t1, "upload": t3 - t2}
    return TaskOutcome(receipt, update.metrics, seconds)


def uses_prototypes(algorithm: str) -> bool:
    """Whether the algorithm's clients send local prototypes (and so train with the complete ones)."""
    from client_sdk.algorithms import ClientAlgorithm, client_algorithm

    return client_algorithm(algorithm).local_prototypes is not ClientAlgorithm.local_prototypes


class DataMismatchError(ValueError):
    """The node's data does not fit the federation (modalities, shapes or classes); the message says how."""


def check_node_data(data: MultimodalArrays, config: FederationCreate) -> None:
    """Refuse data whose modalities or shapes are not the federation's, naming what differs."""
    expected = {m.name: tuple(m.shape) for m in config.modalities}
    have = {m: tuple(x.shape[1:]) for m, x in data.inputs.items()}
    if set(have) != set(expected):
        raise DataMismatchError(f"this node's data has modalities {sorted(have)}, "
                                f"the federation expects {sorted(expected)}")
    wrong = [f"{m}: {list(have[m])} (federation: {list(shape)})" for m, shape in expected.items() if have[m] != shape]
    if wrong:
        raise DataMismatchError("per-sample shapes differ from the federation's: " + "; ".join(wrong))
    if len(data) and int(data.labels.max()) >= config.num_classes:
        raise DataMismatchError(f"labels reach {int(data.labels.max())}, "
                                f"the federation has {config.num_classes} classes")


def prepare_node_data(data: MultimodalArrays, config: FederationCreate) -> MultimodalArrays:
    """The node's data checked against the federation and standardised as its ``normalization`` says."""
    from client_sdk.data.normalize import normalize_arrays

    check_node_data(data, config)
    return normalize_arrays(data, config.normalization, config.modalities)


def client_profile(data: MultimodalArrays, num_classes: int) -> ClientProfile:
    return ClientProfile(
        modalities=[m for m in data.modalities if bool(data.present[m].any())],
        class_counts=data.class_counts(num_classes),
        num_samples=len(data),
    )


class NodeRunner:
    """One edge node's loop. ``run()`` returns 0 when the federation is over (or after ``max_tasks``
    rounds, or on :meth:`stop`), 2 when the token is refused (revoked, wrong federation), 3 when the
    federation or round does not exist, 4 when the node's data does not fit the federation (modalities,
    shapes, classes).

    Network errors, timeouts and 5xx (a coordinator restarting) are retried by the client, then here with
    capped, jittered backoff, forever. A refused update (409: the round closed, failed or moved on while
    this node trained) is logged and the node asks for its next task. A round whose training diverges is
    skipped: nothing is posted for it.
    """

    def __init__(
        self,
        client: MfcplClient,
        federation_id: str,
        data: MultimodalArrays,
        *,
        threads: int = 1,
        device: str = "cpu",
        max_backoff_s: float = 30.0,
        max_poll_s: float = 10.0,
        evaluate_local: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.fid = federation_id
        self.raw_data = data  # as loaded; ``data`` is what trains: standardised as the federation says
        self.data = data
        self.threads = threads
        self.device = device
        self.max_backoff_s = max_backoff_s
        self.max_poll_s = max_poll_s
        self.evaluate_local = evaluate_local
        self.sleep = sleep
        self.local: LocalModel | None = None
        self.rounds_done: list[int] = []
        self.rounds_refused: list[int] = []
        self.rounds_skipped: set[int] = set()
        self._last_wait_reason: str | None = None
        self._uses_prototypes = True
        self._stop = False
        self._rng = random.Random()

    def stop(self) -> None:
        self._stop = True

    def _ensure_model(self) -> LocalModel:
        if self.local is None:
            federation = self.client.federations.get(self.fid)
            config = federation.config
            self.data = prepare_node_data(self.raw_data, config)
            self.local = LocalModel(config, self.threads, self.device)
            self.client.clients.report_profile(self.fid, client_profile(self.data, config.num_classes))
            held = [m for m in self.data.modalities if self.data.present[m].any()]
            log.info("joined federation %s (%s, %d classes) with %d samples, modalities %s, normalization %s",
                     self.fid, config.algorithm, config.num_classes, len(self.data), held,
                     config.normalization.mode)
            if not held:
                log.warning("this node holds none of the federation's modalities (%s) in any sample: it will never "
                            "be sampled to train. It stays live (it counts towards clients_per_round when "
                            "min_clients is unset) and waits until the federation ends; stop it with Ctrl-C.",
                            ", ".join(m.name for m in config.modalities))
            self._uses_prototypes = uses_prototypes(str(config.algorithm))
        return self.local

    def run(self, max_tasks: int | None = None) -> int:
        from client_sdk.trainer import TrainingDiverged  # torch is imported here, not when the module loads

        failures = 0
        while not self._stop:
            task: Task | None = None
            try:
                local = self._ensure_model()
                task = self.client.tasks.next(self.fid)
                failures = 0
                if task.action == TaskAction.DONE:
                    log.info("federation %s is over (%s); %d rounds trained", self.fid, task.reason or "done",
                             len(self.rounds_done))
                    return 0
                if task.action == TaskAction.WAIT or int(task.round or 0) in self.rounds_skipped:
                    if task.reason != self._last_wait_reason:
                        log.info("waiting: %s", task.reason or "skipped round")
                        self._last_wait_reason = task.reason
                    self.sleep(min(max(task.retry_after_s or 1.0, 0.01), self.max_poll_s))
                    continue
                self._last_wait_reason = None
                log.info("round %s: training from model v%s%s", task.round, task.model_version,
                         "" if not self._uses_prototypes else f" with complete prototypes v{task.prototype_version}"
                         if task.prototype_version is not None else " (no complete prototypes yet)")
                try:
                    outcome = perform_task(self.client, self.fid, task, self.data, local,
                                           evaluate_local=self.evaluate_local)
                except TrainingDiverged as exc:
                    log.error("round %s: local training diverged, nothing posted: %s", task.round, exc)
                    self.rounds_skipped.add(int(task.round or 0))
                    continue
                self.rounds_done.append(int(task.round or 0))
                log.info("round %s: update accepted%s (%d samples, loss %.4f%s; download %.2fs, train %.2fs, "
                         "upload %.2fs)", task.round, " (replayed)" if outcome.receipt.replayed else "",
                         outcome.receipt.num_samples, outcome.metrics.get("train_loss", float("nan")),
                         f", global model on local data: macro-F1 {outcome.metrics['local_eval_macro_f1']:.3f}"
                         if "local_eval_macro_f1" in outcome.metrics else "",
                         outcome.seconds["download"], outcome.seconds["train"], outcome.seconds["upload"])
                if max_tasks is not None and len(self.rounds_done) >= max_tasks:
                    return 0
            except DataMismatchError as exc:
                log.error("this node cannot train for federation %s: %s", self.fid, exc)
                return EXIT_DATA_MISMATCH
            except (AuthenticationError, PermissionDeniedError) as exc:
                if isinstance(exc, PermissionDeniedError) and getattr(exc, "code", None) == "not_participant":
                    log.warning("not a participant any more: %s", exc)
                    continue
                log.error("the coordinator refused this node's token: %s", exc)
                return 2
            except ConflictError as exc:
                self.rounds_refused.append(int(task.round or 0) if task is not None else -1)
                log.warning("round %s: update refused (%s: %s); asking for the next task",
                            task.round if task is not None else "?", exc.code, exc.detail)
            except NotFoundError as exc:
                log.error("federation %s not found: %s", self.fid, exc)
                return 3
            except (APIConnectionError, APITimeoutError, ServerError) as exc:
                failures += 1
                delay = min(self.max_backoff_s, 0.5 * 2 ** min(failures, 10)) * (0.5 + self._rng.random() / 2)
                log.warning("coordinator unreachable (%s); retrying in %.1fs", type(exc).__name__, delay)
                self.sleep(delay)
            except MfcplError as exc:
                log.error("request failed: %s", exc)
                failures += 1
                self.sleep(min(self.max_backoff_s, 2.0 * failures))
        return 0


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None,
                        help="data source: DATASET:SHARD[?options] (e.g. uci_har:s05_k2?missing_rule=client&"
                        "missing_q=0.8), a feature file of this node's own data (layout.json next to it), or "
                        "folder#client[?partition=...] (docs/data.md); or use --dataset")
    own = parser.add_argument_group("a data-set folder (instead of --data; docs/data.md)")
    own.add_argument("--dataset", default=None, metavar="PATH", help="the data-set folder (layout.json + files)")
    own.add_argument("--client", default=None, metavar="NAME", help="this node's client in it (a file, group or "
                     "partition client name)")
    own.add_argument("--partition", default=None, choices=["given", "iid", "dirichlet", "group"])
    own.add_argument("--num-clients", type=int, default=None)
    own.add_argument("--alpha", type=float, default=None)
    own.add_argument("--dev-fraction", type=float, default=None)
    own.add_argument("--partition-seed", type=int, default=None, help="the partition's seed (as simulate --seed)")
    parser.add_argument("--data-dir", help="where named datasets live (default $MFCPL_DATASETS_DIR or the cache)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mfcpl client", description="Run an edge node of an mfcpl federation.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="poll for tasks, train, post updates until the federation ends")
    run.add_argument("--server", default=os.environ.get("MFCPL_SERVER_URL"), help="coordinator URL")
    run.add_argument("--token", default=os.environ.get("MFCPL_TOKEN"), help="this node's client token")
    run.add_argument("--federation", default=os.environ.get(ENV_FEDERATION), required=ENV_FEDERATION not in os.environ)
    _add_data_arguments(run)
    run.add_argument("--threads", type=int, default=1, help="torch threads for local training")
    run.add_argument("--device", default="cpu", help="torch device for local training (cpu, cuda, cuda:1, ...)")
    run.add_argument("--cache-dir", help="keep downloaded models/prototypes here (ETag cache)")
    run.add_argument("--max-tasks", type=int, default=None, help="stop after this many trained rounds")
    run.add_argument("--no-local-eval", action="store_true",
                     help="do not evaluate the received global model on the local data before training")
    run.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout in seconds")
    run.add_argument("-v", "--verbose", action="store_true")
    stats = sub.add_parser(
        "stats", help="write this node's feature sums (count, sum, sum of squares per feature; no sample) for "
        "federated normalization: mfcpl federation create --from-dataset LAYOUT_FOLDER --stats-from FILES",
        description="Feature sums of this node's training data for federated standardisation, without sharing a "
        "sample: per standardised modality the rows counted and, per feature, the sum and sum of squares.")
    _add_data_arguments(stats)
    stats.add_argument("--out", default=None, help="write the JSON here (default: standard output)")
    stats.add_argument("-v", "--verbose", action="store_true")
    return p


def _load_node_data(args: argparse.Namespace) -> tuple[str, MultimodalArrays] | None:
    """The node's data as its arguments name it, and the source as text; None (logged) when it cannot load."""
    from client_sdk.data.registry import DataSource, load_client_data

    if (args.data is None) == (args.dataset is None):
        raise SystemExit("give the node's data with --data SOURCE or --dataset PATH --client NAME (not both)")
    source: DataSource | str = args.data
    if args.dataset is not None:
        if not args.client:
            raise SystemExit("--dataset needs --client NAME: which of the data set's clients this node is")
        options = {key: value for key, value in (
            ("partition", args.partition), ("num_clients", args.num_clients), ("alpha", args.alpha),
            ("dev_fraction", args.dev_fraction), ("seed", args.partition_seed)) if value is not None}
        source = DataSource(path=args.dataset, shard=args.client, options=options)
    try:
        shard = load_client_data(source, data_dir=args.data_dir)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        log.error("cannot load data source %r: %s", str(source), exc)
        return None
    return str(source), shard.data


def _write_stats(args: argparse.Namespace) -> int:
    import json

    from client_sdk.data.normalize import feature_sums, specs_from_arrays, sums_to_json

    loaded = _load_node_data(args)
    if loaded is None:
        return 1
    source, data = loaded
    sums = feature_sums(data, specs_from_arrays(data))
    text = json.dumps(sums_to_json(sums, source), indent=1)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
        log.info("feature sums of %d samples (%s) written to %s", len(data), ", ".join(sums), args.out)
    else:
        print(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # one line per HTTP request drowns the node's own log; -v shows them
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "stats":
        return _write_stats(args)
    if not args.token:
        raise SystemExit("a client token is needed: --token or MFCPL_TOKEN")
    loaded = _load_node_data(args)
    if loaded is None:
        return 1
    source, data = loaded
    log.info("data %s: %d samples (%s complete), class counts %s", source, len(data), int(data.complete.sum()),
             np.bincount(data.labels).tolist())
    with MfcplClient(args.server, args.token, timeout=args.timeout, cache_dir=args.cache_dir) as client:
        log.info("coordinator %s, federation %s", client.base_url, args.federation)
        runner = NodeRunner(client, args.federation, data, threads=args.threads, device=args.device,
                            evaluate_local=not args.no_local_eval)
        signal.signal(signal.SIGTERM, lambda *_: runner.stop())
        return runner.run(max_tasks=args.max_tasks)
