from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sdk_http.livehttp import ScriptedServer


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer().start()
    try:
        yield server
    finally:
        server.stop()
