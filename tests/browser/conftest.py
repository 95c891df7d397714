"""A headless Chromium (the system's /usr/bin/chromium, driven by Playwright) for the tests of the coordinator's
web pages; skipped, naming what is missing, when Playwright or the browser is absent (a failure under CI=true)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import missing_service

CHROMIUM = os.environ.get("MFCPL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright import sync_api
    except ImportError:
        missing_service("Playwright", "the dev extra installs it")
    if not Path(CHROMIUM).exists():
        missing_service("Chromium", f"nothing at {CHROMIUM}; set MFCPL_CHROMIUM")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def artifacts() -> Path:
    """test-artifacts/ at the repository root (ignored by git): screenshots and traces of the browser tests."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
