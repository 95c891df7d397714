"""/docs (Swagger UI) and /redoc in headless Chromium, offline: Authorize with the admin token, Try it out on
GET /v1/federations/{fid}/rounds; every request that leaves the coordinator's origin is blocked and recorded.

Needs Chromium at /usr/bin/chromium (Playwright's own browser download is not used); skipped without it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.federation import create_federation, enroll, small_model, wait_round_state

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Chromium at /usr/bin/chromium"),
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def _offline_page(browser, origin: str):
    """A page whose requests to any other origin are aborted and recorded."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    outside: list[str] = []

    def route(r) -> None:
        url = r.request.url
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" == origin or parts.scheme in ("data", "blob"):
            r.continue_()
        else:
            outside.append(url)
            r.abort()

    page.route("**/*", route)
    return page, outside


def test_swagger_ui_authorizes_and_runs_a_request_offline(coordinator, browser) -> None:
    admin = coordinator.client()
    fid = create_federation(admin, small_model(), clients_per_round=1, quorum=1)
    node = enroll(admin, fid, "node-1")
    wait_round_state(admin, fid, 1, ("open",))
    origin = coordinator.base_url.rstrip("/")
    page, outside = _offline_page(browser, origin)
    ARTIFACTS.mkdir(exist_ok=True)

    page.goto(f"{origin}/docs")
    page.locator("button.authorize").first.click()
    page.locator(".modal-ux input[type=text], .modal-ux input[type=password]").first.fill(coordinator.admin_token)
    page.locator(".modal-ux .auth-btn-wrapper button.authorize").click()
    page.locator(".modal-ux button.btn-done").click()

    operation = page.locator(".opblock-get").filter(
        has=page.locator('.opblock-summary-path[data-path="/v1/federations/{fid}/rounds"]'))
    operation.locator(".opblock-summary").first.click()
    operation.locator("button.try-out__btn").click()
    operation.locator('input[placeholder="fid"]').fill(fid)
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table tbody td.response-col_status").first
    status.wait_for()
    assert status.inner_text().strip().startswith("200")
    body = operation.locator(".live-responses-table tbody td.response-col_description").first.inner_text()
    assert fid in body and '"number": 1' in body
    operation.locator(".live-responses-table").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "docs-ui.png"))
    assert outside == [], f"requests left the coordinator's origin: {outside}"
    node.close()


def test_redoc_renders_offline(coordinator, browser) -> None:
    origin = coordinator.base_url.rstrip("/")
    page, outside = _offline_page(browser, origin)
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(f"{origin}/redoc")
    page.get_by_role("heading", name="mfcpl coordinator").first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "redoc.png"))
    assert outside == [], f"requests left the coordinator's origin: {outside}"
