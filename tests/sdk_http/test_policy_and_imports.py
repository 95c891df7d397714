"""Pure retry-policy functions, and that the SDK's HTTP layer imports without the server stack or torch."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from client_sdk.client import backoff_delay, parse_retry_after, retry_delay


def test_parse_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == 90.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=90), usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after(None) is None


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    rng = random.Random(0)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (3, 4.0), (10, 30.0), (500, 30.0)]:
        samples = [backoff_delay(attempt, base=0.5, cap=30.0, rng=rng) for _ in range(200)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > 0.8 * ceiling and min(samples) < 0.2 * ceiling  # spread over the whole range


def test_retry_delay_prefers_retry_after_but_caps_it() -> None:
    assert retry_delay(0, "2", base=0.5, cap=30.0) == 2.0
    assert retry_delay(0, "3600", base=0.5, cap=30.0) == 30.0
    assert 0.0 <= retry_delay(2, "garbage", base=0.5, cap=30.0) <= 2.0


BLOCKER = """
import importlib.abc, sys
BLOCKED = {"fastapi", "sqlalchemy", "torch", "starlette", "uvicorn", "alembic", "coordinator"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, Block())
from client_sdk.client import MfcplClient
from client_sdk import errors, cache
from mfcpl.wire import schemas, tensors
with MfcplClient("http://127.0.0.1:9", "t") as c:
    assert c.federations and c.models and c.events
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("ok")
"""


def test_client_imports_without_server_stack_or_torch() -> None:
    result = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("module", ["torch", "fastapi"])
def test_blocker_really_blocks(module: str) -> None:
    code = BLOCKER.split("from client_sdk")[0] + f"import {module}\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "blocked" in result.stderr
