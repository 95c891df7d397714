"""Prometheus metrics (docs/operations.md, "Observability").

Two kinds of metric, so that every scrape of a replica gives the same answer whichever worker serves it:

* **Events** (updates, refusals, round transitions, aggregation and round durations, HTTP requests) are counted
  where they happen, in the process that handled them. With several worker processes (``mfcpl serve --workers
  N``, ``deploy/start.sh``) they use prometheus_client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` names an
  empty directory, created (or emptied) before the workers start, where each worker keeps its values in files;
  a scrape sums every worker's files (:class:`~prometheus_client.multiprocess.MultiProcessCollector`), those of
  workers that exited included, so totals never go back. Without that variable the one process keeps them in
  memory (:data:`REGISTRY`).
* **State** (federations by status, current rounds, live clients, rounds by state) is read from the database at
  scrape time (:class:`StateCollector`): the same on every worker and every replica, never stale.

``metrics_registry(services)`` builds what ``GET /metrics`` exposes: the events, the state, the answering
process's ``process_*`` metrics and ``mfcpl_build_info``.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mfcpl import __version__
from mfcpl.wire.schemas import FINISHED_STATUSES, FederationStatus, RoundState

if TYPE_CHECKING:
    from coordinator.core import Services

log = logging.getLogger("mfcpl.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FEDERATION_LABEL_LIMIT = 100
"""Non-finished federations labelled by id in the per-federation gauges; the rest are summed as ``other``."""
OTHER = "other"

REGISTRY = CollectorRegistry(auto_describe=True)
"""The event metrics of this process (single-process mode; in multiprocess mode their values are in files)."""

UPDATES = Counter("mfcpl_updates_total", "Update uploads by outcome (accepted, replayed, refused).",
                  ["outcome"], registry=REGISTRY)
UPDATE_REFUSALS = Counter("mfcpl_update_refusals_total", "Refused updates by problem code.", ["code"],
                          registry=REGISTRY)
UPDATE_BYTES = Counter("mfcpl_update_bytes_total", "Bytes of accepted updates.", registry=REGISTRY)
ROUNDS = Counter("mfcpl_rounds_total", "Round transitions (opened, closed, failed).",
                 ["transition"], registry=REGISTRY)
AGGREGATION_SECONDS = Histogram(
    "mfcpl_aggregation_seconds", "Time to aggregate one round (FedAvg/FedOpt and prototypes, blobs included).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=REGISTRY,
)
ROUND_SECONDS = Histogram(
    "mfcpl_round_duration_seconds", "Time from a round's opening to its close, observed when it closes.",
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600, 86400), registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "mfcpl_http_requests_total", "HTTP requests by method, route template and status class.",
    ["method", "route", "status"], registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "mfcpl_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by method and route template "
    "(an event stream's is its lifetime).",
    ["method", "route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
WORKERS = Gauge("mfcpl_worker_processes", "Worker processes serving (1 without multiprocess mode).",
                registry=REGISTRY, multiprocess_mode="livesum")

# Label values known in advance appear from the first scrape on, at 0, instead of only after their first event.
for _outcome in ("accepted", "replayed", "refused"):
    UPDATES.labels(_outcome)
for _transition in ("opened", "closed", "failed"):
    ROUNDS.labels(_transition)

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def multiprocess_dir() -> str | None:
    """The multiprocess directory of this process's metrics, or None (single-process mode)."""
    return os.environ.get(MULTIPROC_ENV) or None


@contextlib.contextmanager
def worker_metrics_dir(workers: int) -> Iterator[str | None]:
    """For ``mfcpl serve``: make the environment the workers inherit point at an empty multiprocess directory.

    ``PROMETHEUS_MULTIPROC_DIR`` already set: that directory is created if needed and emptied of earlier runs'
    files (it is the operator's, it stays). Else, with more than one worker: a new temporary directory, removed
    when the server stops. One worker runs in this process and keeps its metrics in memory: None.
    """
    given = multiprocess_dir()
    if given is not None:
        os.makedirs(given, exist_ok=True)
        for stale in glob.glob(os.path.join(given, "*.db")):
            os.remove(stale)
        yield given
        return
    if workers <= 1:
        yield None
        return
    path = tempfile.mkdtemp(prefix="mfcpl-prometheus-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


_LIVE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db$")


def _reap_dead_workers(path: str) -> None:
    """``mark_process_dead`` for workers that died without their shutdown (SIGKILL, OOM): their live gauges go."""
    for name in os.listdir(path):
        match = _LIVE_FILE.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:  # exists, someone else's
            pass


class _Forward(Collector):
    """A registry's metrics, registered into another registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Any]:
        return self.registry.collect()


class BuildInfoCollector(Collector):
    def collect(self) -> Iterable[Any]:
        info = GaugeMetricFamily("mfcpl_build_info", "The coordinator's version (always 1).", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


class StateCollector(Collector):
    """Gauges read from the database at scrape time; label sets bounded (docs/operations.md, "Observability")."""

    def __init__(self, services: Services, limit: int = FEDERATION_LABEL_LIMIT) -> None:
        self.services = services
        self.limit = limit

    def collect(self) -> Iterable[Any]:
        started = time.perf_counter()
        up = GaugeMetricFamily("mfcpl_state_up", "1 if the state gauges could be read from the database, else 0.")
        try:
            families = self._read()
        except Exception as exc:  # a scrape must not fail because the database blinks
            log.warning("metrics: cannot read the state gauges from the database: %r", exc)
            up.add_metric([], 0)
            yield up
            return
        yield from families
        up.add_metric([], 1)
        yield up
        seconds = GaugeMetricFamily("mfcpl_state_scrape_seconds", "Time to read the state gauges.")
        seconds.add_metric([], time.perf_counter() - started)
        yield seconds

    def _read(self) -> list[GaugeMetricFamily]:
        from sqlalchemy import func, select

        from coordinator.clients.orm import ClientRow
        from coordinator.federations.orm import FederationRow
        from coordinator.rounds.orm import RoundRow
        from coordinator.timeutil import utcnow

        finished = [str(s) for s in FINISHED_STATUSES]
        now = utcnow()
        with self.services.db.read() as session:
            by_status = dict(session.execute(
                select(FederationRow.status, func.count()).group_by(FederationRow.status)).all())
            rounds_by_state = dict(session.execute(
                select(RoundRow.state, func.count()).group_by(RoundRow.state)).all())
            active = list(session.execute(
                select(FederationRow.id).where(FederationRow.status.not_in(finished))
                .order_by(FederationRow.created_at, FederationRow.id)).scalars())
            current = dict(session.execute(
                select(RoundRow.federation_id, func.max(RoundRow.number))
                .join(FederationRow, FederationRow.id == RoundRow.federation_id)
                .where(FederationRow.status.not_in(finished)).group_by(RoundRow.federation_id)).all())
            live_rows = session.execute(
                select(ClientRow.federation_id, ClientRow.modalities)
                .join(FederationRow, FederationRow.id == ClientRow.federation_id)
                .where(FederationRow.status.not_in(finished), ClientRow.revoked.is_(False),
                       ClientRow.lease_expires_at > now)).all()

        federations = GaugeMetricFamily("mfcpl_federations", "Federations by status.", labels=["status"])
        for status in FederationStatus:
            federations.add_metric([str(status)], by_status.get(str(status), 0))
        rounds = GaugeMetricFamily("mfcpl_rounds", "Rounds by state.", labels=["state"])
        for state in RoundState:
            rounds.add_metric([str(state)], rounds_by_state.get(str(state), 0))

        labelled = set(active[:self.limit])

        def label(fid: str) -> str:
            return fid if fid in labelled else OTHER

        current_round = GaugeMetricFamily(
            "mfcpl_federation_current_round",
            f"Number of the latest round of each non-finished federation (0: none yet; the first {self.limit} "
            "by creation).", labels=["federation"])
        for fid in active[:self.limit]:
            current_round.add_metric([fid], current.get(fid, 0))
        live: dict[str, int] = dict.fromkeys(labelled, 0)
        trainable: dict[str, int] = dict.fromkeys(labelled, 0)
        if len(active) > self.limit:
            live[OTHER] = trainable[OTHER] = 0
        for fid, modalities in live_rows:
            key = label(fid)
            live[key] = live.get(key, 0) + 1
            if modalities:
                trainable[key] = trainable.get(key, 0) + 1
        live_clients = GaugeMetricFamily(
            "mfcpl_live_clients", "Live clients (lease not expired, not revoked) of each non-finished federation "
            f"(the first {self.limit} by creation, the rest summed as federation=\"other\").", labels=["federation"])
        trainable_clients = GaugeMetricFamily(
            "mfcpl_trainable_clients", "Live clients that reported at least one modality (can be sampled), "
            "labelled as mfcpl_live_clients.", labels=["federation"])
        for key in live:
            live_clients.add_metric([key], live[key])
            trainable_clients.add_metric([key], trainable[key])
        labelled_count = GaugeMetricFamily(
            "mfcpl_federations_labelled", "Non-finished federations with a label of their own in the per-federation "
            f"gauges (at most {self.limit}).")
        labelled_count.add_metric([], len(labelled))
        return [federations, rounds, current_round, live_clients, trainable_clients, labelled_count]


_STATIC_COLLECTORS: list[Collector] = [ProcessCollector(registry=None), PlatformCollector(registry=None),
                                       BuildInfoCollector()]


def metrics_registry(services: Services) -> CollectorRegistry:
    """What one scrape exposes: the events (all workers' in multiprocess mode), the state, process and build."""
    registry = CollectorRegistry()
    path = multiprocess_dir()
    if path is not None:
        _reap_dead_workers(path)
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Forward(REGISTRY))
    for collector in _STATIC_COLLECTORS:
        registry.register(collector)
    registry.register(StateCollector(services))
    return registry


def _route_template(scope: Scope) -> str:
    """The path template of the route that matched (``/v1/federations/{fid}``), never the raw path.

    The matched route is ``scope["route"]`` (FastAPI, Starlette); a request answered before routing (a 413 of
    the body limit, a CORS preflight) is matched here. A route of an included router knows only its own path
    (``/federations/{fid}``): the literal prefix it was included under (``/v1``) is taken from the request path.
    """
    route = scope.get("route")
    if route is None:
        for candidate in getattr(getattr(scope.get("app"), "router", None), "routes", ()):
            match, child = candidate.matches(scope)
            if match != Match.NONE:
                route = child.get("route", candidate)
                break
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    regex = getattr(route, "path_regex", None)
    if not isinstance(template, str) or not template or regex is None:
        return UNMATCHED
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    if regex.match(path):
        return template
    for i, char in enumerate(path):
        if char == "/" and i > 0 and regex.match(path[i:]):
            prefix = path[:i]
            return prefix + template if _LITERAL_PREFIX.fullmatch(prefix) else UNMATCHED
    return template


_LITERAL_PREFIX = re.compile(r"(?:/[A-Za-z][A-Za-z0-9_.-]*)+")
"""A router prefix (``/v1``): path segments that start with a letter, never an id or a number."""


class HttpMetricsMiddleware:
    """Counts HTTP requests and their durations by method, route template and status class (2xx...).

    Outermost, so refusals of the other middlewares count too. It also marks its worker live for
    ``mfcpl_worker_processes`` at the application's start and dead at its shutdown (``mark_process_dead``).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            method = scope.get("method", "")
            method = method if method in HTTP_METHODS else OTHER
            route = _route_template(scope)
            HTTP_REQUESTS.labels(method, route, f"{status // 100}xx").inc()
            HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - started)

    @staticmethod
    def _lifespan_send(send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                WORKERS.set(1)
            elif message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                WORKERS.set(0)
                path = multiprocess_dir()
                if path is not None:
                    mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]
            await send(message)

        return lifespan_send
