"""/metrics with `mfcpl serve --workers 2` (SQLite file): every scrape agrees on the totals, whichever worker
answers; state gauges read from the database; HTTP metrics by route template; the Grafana dashboard only asks
for metrics that a live scrape exposes."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.core import Services
from coordinator.observability import OTHER, StateCollector, worker_metrics_dir
from coordinator.settings import Settings
from mfcpl import __version__
from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import (
    create_federation,
    enroll,
    known_update,
    post_update,
    small_model,
    wait_round_state,
    wait_task,
)

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "mfcpl-dashboard.json"
UPDATES_ROUTE = "/v1/federations/{fid}/rounds/{r}/updates"
SCRAPES = 10

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(url: str) -> tuple[Samples, set[str]]:
    """One scrape on a new connection (so the kernel may hand it to either worker): samples and family names."""
    response = httpx.get(url + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    names: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        names.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, names


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@dataclass
class Federation:
    server: CoordinatorProcess
    running: str
    waiting: str


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """Two workers; a federation whose round 1 closed with 4 accepted updates (round 2 open), one replay and one
    refusal; a second federation waiting (no model) with one live client that has no modality."""
    work = tmp_path_factory.mktemp("prometheus")
    server = CoordinatorProcess(f"sqlite:///{work / 'mfcpl.db'}", work / "data", tick_s=0.1)
    server.workers = 2
    server.start()
    try:
        model = small_model(0)
        with server.client() as admin:
            fid = create_federation(admin, model, algorithm="fedavg", rounds=3, clients_per_round=4)
            clients = [enroll(admin, fid, f"node-{i}") for i in range(4)]
            waiting = create_federation(admin, None, name="waiting")
            idle = enroll(admin, waiting, "idle", modalities=[])
            for client in clients:
                assert wait_task(client, fid)["round"] == 1
            bodies = []
            for i, client in enumerate(clients):
                _, body = known_update(model, i, num_samples=10 + i, base_version=0)
                bodies.append(body)
                response = post_update(client, fid, 1, body)
                assert response.status_code == 201, response.text
            wait_round_state(admin, fid, 1)
            wait_round_state(admin, fid, 2, ("open",))
            replay = post_update(clients[0], fid, 1, bodies[0])
            assert replay.status_code == 200 and replay.json()["replayed"] is True, replay.text
            refused = post_update(clients[0], fid, 7, bodies[0])
            assert 400 <= refused.status_code < 500, refused.text
            for client in (*clients, idle):
                client.close()
        yield Federation(server=server, running=fid, waiting=waiting)
    finally:
        server.stop()


def _totals(samples: Samples) -> dict[str, float]:
    """The event totals of a scrape (HTTP metrics excepted: each scrape is a request that counts)."""
    return {f"{name}{dict(labels)}": value for (name, labels), value in samples.items()
            if name.startswith(("mfcpl_updates", "mfcpl_update_", "mfcpl_rounds_total", "mfcpl_aggregation",
                                "mfcpl_round_duration"))}


def test_every_scrape_of_two_workers_agrees(federation: Federation) -> None:
    scrapes = [_scrape(federation.server.base_url)[0] for _ in range(SCRAPES)]
    totals = [_totals(s) for s in scrapes]
    agreeing = sum(t == totals[0] for t in totals)
    print(f"scrape consistency with 2 workers: {agreeing} of {SCRAPES} scrapes agree")
    assert agreeing == SCRAPES, totals
    fid, waiting = federation.running, federation.waiting
    for samples in scrapes:
        assert _value(samples, "mfcpl_worker_processes") == 2
        assert _value(samples, "mfcpl_updates_total", outcome="accepted") == 4
        assert _value(samples, "mfcpl_updates_total", outcome="replayed") == 1
        assert _value(samples, "mfcpl_updates_total", outcome="refused") == 1
        assert sum(v for (n, _), v in samples.items() if n == "mfcpl_update_refusals_total") == 1
        assert _value(samples, "mfcpl_rounds_total", transition="closed") == 1
        assert _value(samples, "mfcpl_rounds_total", transition="opened") == 2
        assert _value(samples, "mfcpl_rounds_total", transition="failed") == 0
        assert _value(samples, "mfcpl_aggregation_seconds_count") == 1
        assert _value(samples, "mfcpl_round_duration_seconds_count") == 1
        assert (_value(samples, "mfcpl_update_bytes_total") or 0) > 0
        # State, from the database.
        assert _value(samples, "mfcpl_state_up") == 1
        assert _value(samples, "mfcpl_federations", status="running") == 1
        assert _value(samples, "mfcpl_federations", status="waiting") == 1
        assert _value(samples, "mfcpl_federations", status="completed") == 0
        assert _value(samples, "mfcpl_rounds", state="closed") == 1
        assert _value(samples, "mfcpl_rounds", state="open") == 1
        assert _value(samples, "mfcpl_federation_current_round", federation=fid) == 2
        assert _value(samples, "mfcpl_federation_current_round", federation=waiting) == 0
        assert _value(samples, "mfcpl_live_clients", federation=fid) == 4
        assert _value(samples, "mfcpl_trainable_clients", federation=fid) == 4
        assert _value(samples, "mfcpl_live_clients", federation=waiting) == 1
        assert _value(samples, "mfcpl_trainable_clients", federation=waiting) == 0
        assert _value(samples, "mfcpl_federations_labelled") == 2
        # HTTP, by route template; never a raw path.
        assert _value(samples, "mfcpl_http_requests_total", method="POST", route=UPDATES_ROUTE, status="2xx") == 5
        assert _value(samples, "mfcpl_http_requests_total", method="POST", route=UPDATES_ROUTE, status="4xx") == 1
        assert _value(samples, "mfcpl_http_request_duration_seconds_count", method="POST", route=UPDATES_ROUTE) == 6
        routes = {dict(labels).get("route") for (name, labels), _ in samples.items()
                  if name.startswith("mfcpl_http_")}
        assert "/v1/federations/{fid}/tasks/next" in routes, routes
        assert not any(fid in route or waiting in route for route in routes if route), routes
        # Process and build.
        assert _value(samples, "mfcpl_build_info", version=__version__) == 1
        assert (_value(samples, "process_resident_memory_bytes") or 0) > 0
    # A scrape counts once its answer is out: the earlier scrapes are in the last one.
    assert any(dict(labels).get("route") == "/metrics" for (name, labels), _ in scrapes[-1].items()
               if name == "mfcpl_http_requests_total")


def test_per_federation_labels_are_capped_with_an_other_bucket(federation: Federation) -> None:
    server = federation.server
    services = Services.build(Settings(database_url=server.database_url, state_dir=server.data_dir))
    try:
        families = {f.name: f for f in StateCollector(services, limit=1).collect()}
    finally:
        services.db.dispose()
    live = {s.labels["federation"]: s.value for s in families["mfcpl_live_clients"].samples}
    assert live == {federation.running: 4, OTHER: 1}  # created first, labelled; the waiting one in "other"
    trainable = {s.labels["federation"]: s.value for s in families["mfcpl_trainable_clients"].samples}
    assert trainable == {federation.running: 4, OTHER: 0}
    current = {s.labels["federation"]: s.value for s in families["mfcpl_federation_current_round"].samples}
    assert current == {federation.running: 2}


# PromQL words that are not metric names.
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                 "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (enough PromQL for dashboards: functions, aggregations with
    by/without, label matchers, range selectors, numbers and Grafana variables)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end():].lstrip()
        if following.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue  # a function or an aggregation operator, or a keyword
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # part of a number (1e3)
        names.add(word)
    return names


def test_metric_names_of_promql() -> None:
    assert metric_names('histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{route!~".*/x"}[5m])))') \
        == {"a_bucket"}
    assert metric_names("sum(rate(a_total[$__rate_interval])) / sum without (x) (b)") == {"a_total", "b"}


def test_grafana_dashboard_asks_only_for_exposed_metrics(federation: Federation) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"] and dashboard["uid"]
    _, exposed = _scrape(federation.server.base_url)
    asked: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            asked |= names
    missing = asked - exposed
    assert not missing, f"the dashboard asks for metrics /metrics does not expose: {sorted(missing)}"
    for wanted in ("mfcpl_rounds_total", "mfcpl_updates_total", "mfcpl_update_refusals_total",
                   "mfcpl_aggregation_seconds_bucket", "mfcpl_http_request_duration_seconds_bucket",
                   "mfcpl_federations", "mfcpl_live_clients"):
        assert wanted in asked, wanted


def test_serve_empties_a_given_multiprocess_dir_and_removes_its_own(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with worker_metrics_dir(1) as path:
        assert path is None
    with worker_metrics_dir(2) as path:
        assert path is not None and os.environ["PROMETHEUS_MULTIPROC_DIR"] == path and os.path.isdir(path)
    assert not os.path.exists(path) and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    given = tmp_path / "prom"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"stale")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))
    with worker_metrics_dir(2) as path:
        assert path == str(given) and not list(given.iterdir())
    assert given.is_dir()
