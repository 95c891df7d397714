"""The dashboard (/ui/) in a real headless Chromium against a real coordinator: sign in with the admin token,
watch a short federation live (the round counter and a chart advance without a reload), pause it with the
button, download a model version; every request the page makes goes to the coordinator's own origin.

Measured on the way (printed, and written to test-artifacts/dashboard-measurements.json; the figures quoted in
docs/operations.md, "Watching a federation"): the bytes of a full load, and the time from a round closing
(its closed_at) to the page showing it closed.
"""

from __future__ import annotations

import json
import shutil
import statistics
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import (
    create_federation,
    enroll,
    known_update,
    local_prototypes,
    post_update,
    small_model,
    wait_round_state,
    wait_task,
)

ROOT = Path(__file__).resolve().parents[2]

# Records, in the page, when each round's row first shows `closed` (wall clock, the coordinator's clock too).
WATCH_ROUNDS = """() => {
  window.__closedSeen = {};
  window.__marker = "no reload";
  const look = () => {
    for (const row of document.querySelectorAll('#rounds tr[data-state="closed"]')) {
      const n = row.dataset.round;
      if (!(n in window.__closedSeen)) window.__closedSeen[n] = Date.now();
    }
  };
  new MutationObserver(look).observe(document.body, { subtree: true, childList: true, attributes: true });
  look();
}"""


def epoch_ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


class Driver(threading.Thread):
    """Two clients playing the federation's rounds: round 1 once `go` is set, round 2 right after, round 3 once
    `go_last` is set; each round waits a moment before posting so the page sees it open, and the admin records a
    dev/test evaluation once it closed."""

    def __init__(self, admin: httpx.Client, fid: str, clients: list[Any], model: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.admin, self.fid, self.clients, self.model = admin, fid, clients, model
        self.go, self.go_last = threading.Event(), threading.Event()
        self.closed: dict[int, dict[str, Any]] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for number in (1, 2, 3):
                gate = {1: self.go, 3: self.go_last}.get(number)
                if gate is not None and not gate.wait(120):
                    raise TimeoutError(f"round {number} was never let go")
                tasks = [wait_task(c, self.fid, timeout_s=60) for c in self.clients]
                assert {t["round"] for t in tasks} == {number}, tasks
                time.sleep(1.0)
                for i, (client, task) in enumerate(zip(self.clients, tasks, strict=True)):
                    protos = {"shared": local_prototypes(10 * number + i, [0, 1] if i == 0 else [1, 2])}
                    _, body = known_update(self.model, 100 * number + i, num_samples=15,
                                           base_version=task["model_version"], prototypes=protos,
                                           metrics={"loss": 1.2 / number + 0.1 * i, "accuracy": 0.3 + 0.2 * number})
                    response = post_update(client, self.fid, number, body)
                    assert response.status_code == 201, response.text
                self.closed[number] = wait_round_state(self.admin, self.fid, number, timeout_s=60)
                for split, f1 in (("dev", 0.4 + 0.1 * number), ("test", 0.35 + 0.1 * number)):
                    response = self.admin.post(f"/v1/federations/{self.fid}/rounds/{number}/evaluations",
                                               json={"split": split, "metrics": {"macro_f1": f1}})
                    assert response.status_code == 201, response.text
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.fixture
def server(tmp_path: Path) -> Any:
    proc = CoordinatorProcess(f"sqlite:///{tmp_path / 'mfcpl.db'}", tmp_path / "data", tick_s=0.1)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def test_dashboard_watches_and_operates_a_federation(server: CoordinatorProcess, browser: Any,
                                                     artifacts: Path) -> None:
    origin = server.base_url.rstrip("/")
    admin = server.client()
    model = small_model()
    fid = create_federation(admin, model, name="browser-demo", rounds=3, clients_per_round=2, round_deadline_s=20,
                            lease_s=120)
    clients = [enroll(admin, fid, f"node-{i}") for i in (1, 2)]
    driver = Driver(admin, fid, clients, model)
    driver.start()

    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    requests: list[Any] = []
    finished: list[Any] = []
    console: list[str] = []
    page.on("request", lambda r: requests.append(r))
    page.on("requestfinished", lambda r: finished.append(r))
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    try:
        # -- the page and its security headers; /ui answers the same page without a redirect
        bare = admin.get("/ui")
        assert bare.status_code == 200 and 'src="/ui/app.js"' in bare.text, bare.status_code
        assert "default-src 'self'" in bare.headers["content-security-policy"]
        assert admin.get("/ui/nothing-here.js").status_code == 404
        response = page.goto(f"{origin}/ui/")
        assert response is not None and response.status == 200
        assert "default-src 'self'" in response.headers["content-security-policy"]
        page.screenshot(path=str(artifacts / "dashboard-signin.png"))

        # -- sign in: the token goes to sessionStorage, never into the URL
        page.fill("#token", server.admin_token)
        page.click("#signin")
        page.wait_for_selector(f'#federations tr[data-fid="{fid}"]')
        assert page.evaluate("sessionStorage.getItem('mfcpl.token')") == server.admin_token
        assert server.admin_token not in page.url
        page.screenshot(path=str(artifacts / "dashboard-list.png"))

        # -- the federation, live
        page.click(f'#federations tr[data-fid="{fid}"] a')
        page.wait_for_selector("#pause:not([disabled])")
        page.wait_for_selector("#live:not([hidden])")
        page.wait_for_function("() => document.querySelector('#live').textContent === 'live'")
        page.evaluate(WATCH_ROUNDS)
        page.wait_for_function("() => document.querySelectorAll('#rounds tr').length >= 1")  # round 1 open
        load_bytes = sum(r.sizes()["responseBodySize"] + r.sizes()["responseHeadersSize"] for r in finished
                         if "/events" not in r.url)
        ui_bytes = sum(r.sizes()["responseBodySize"] for r in finished if "/ui/" in r.url)
        load_requests = len([r for r in finished if "/events" not in r.url])
        points_before = page.evaluate(
            "() => Number(document.querySelector('canvas[data-chart=\"train:loss\"]')?.dataset.points || 0)")

        driver.go.set()
        # the counter advances to round 3 (rounds 1 and 2 closed) and the charts gain points, without a reload
        page.wait_for_function("() => Number(document.querySelector('#current-round').dataset.round) >= 3",
                               timeout=60_000)
        page.wait_for_function(
            "() => Number(document.querySelector('canvas[data-chart=\"train:loss\"]')?.dataset.points || 0) >= 2",
            timeout=30_000)
        assert points_before == 0
        page.wait_for_selector('#received:text("0 / 2")')
        page.wait_for_selector('canvas[data-chart="prototypes"]')
        assert page.evaluate("window.__marker") == "no reload"
        page.screenshot(path=str(artifacts / "dashboard-live.png"), full_page=True)

        # -- pause with the button
        page.click("#pause")
        page.wait_for_selector('#status[data-status="paused"]')
        page.wait_for_selector("#resume:not([disabled])")
        assert admin.get(f"/v1/federations/{fid}").json()["status"] == "paused"

        # -- round 3 still closes (pausing stops new rounds only); the page shows it
        driver.go_last.set()
        page.wait_for_selector('#rounds tr[data-round="3"][data-state="closed"]', timeout=60_000)
        driver.join(60)
        assert driver.error is None, driver.error
        assert page.evaluate("window.__marker") == "no reload"
        page.wait_for_function("() => document.querySelectorAll('canvas[data-chart=\"eval:macro_f1\"]').length === 1",
                               timeout=30_000)  # evaluations arrive after the close: the quiet refresh
        page.screenshot(path=str(artifacts / "dashboard-paused.png"), full_page=True)

        # -- a model version downloads with the Authorization header, via an object URL
        with page.expect_download() as info:
            page.click('#models tr[data-version="1"] button.download')
        saved = artifacts / "dashboard-model-v1.safetensors"
        info.value.save_as(str(saved))
        assert saved.read_bytes() == admin.get(f"/v1/federations/{fid}/models/1/weights").content

        # -- round close -> page latency, per round
        seen = page.evaluate("window.__closedSeen")
        latencies = {n: seen[str(n)] - epoch_ms(driver.closed[n]["closed_at"]) for n in (1, 2, 3)}
        assert all(-50 < v < 5000 for v in latencies.values()), latencies
    finally:
        driver.go.set()
        driver.go_last.set()
        context.close()
        for client in clients:
            client.close()
        admin.close()

    # -- every request went to the coordinator itself (object URLs and data: are the page's own)
    foreign = [r.url for r in requests if urlsplit(r.url).scheme not in ("blob", "data")
               and f"{urlsplit(r.url).scheme}://{urlsplit(r.url).netloc}" != origin]
    assert foreign == [], foreign
    assert not [m for m in console if m.startswith(("pageerror", "error"))], console

    measurements = {"full_load_bytes": load_bytes, "full_load_requests": load_requests, "ui_files_bytes": ui_bytes,
                    "close_to_page_ms": {str(n): round(v, 1) for n, v in latencies.items()},
                    "close_to_page_median_ms": round(statistics.median(latencies.values()), 1)}
    (artifacts / "dashboard-measurements.json").write_text(json.dumps(measurements, indent=2) + "\n")
    print(json.dumps(measurements))
    (ROOT / "docs" / "images").mkdir(exist_ok=True)
    shutil.copyfile(artifacts / "dashboard-live.png", ROOT / "docs" / "images" / "dashboard.png")
