"""Property-based tests of the whole HTTP API from its own OpenAPI document (Schemathesis, run as its CLI against a
real coordinator on SQLite and on Postgres): no request, valid or not, may get a 5xx, and every answer must match
the schema the document publishes. Bounded: a fixed number of examples per operation and a fixed seed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import create_federation, enroll, small_model

CHECKS = "not_a_server_error,response_schema_conformance"
EXAMPLES = 15


def _schemathesis(coordinator: CoordinatorProcess, token: str, config: Path) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    return subprocess.run(
        [executable, "--config-file", str(config), "run", f"{coordinator.base_url}/openapi.json",
         "-H", f"Authorization: Bearer {token}", "--checks", CHECKS, "--max-examples", str(EXAMPLES),
         "--seed", "1", "--request-timeout", "30", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=config.parent,
    )


@pytest.mark.parametrize("who", ["admin", "client"])
def test_no_5xx_and_every_answer_matches_the_published_schema(coordinator: CoordinatorProcess, tmp_path: Path,
                                                              who: str) -> None:
    with coordinator.client() as admin:
        fid = create_federation(admin, small_model(0), clients_per_round=1)
        node = enroll(admin, fid, "probe")
    node.close()
    # Path parameters of a real federation and round, so the operations get past 404 to their real logic.
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.fid" = "{fid}"\n"path.r" = 1\n')
    result = _schemathesis(coordinator, coordinator.admin_token if who == "admin" else node.token, config)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert " passed" in output and "generated" in output, output[-2000:]
