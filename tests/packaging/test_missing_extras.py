"""What a partial install gets from the `mfcpl` command: a message naming the missing extra and exit status 2,
never a ModuleNotFoundError traceback. A meta-path finder in a fresh interpreter makes the extras' modules
missing; the operator commands work with the base install alone (httpx), the admin token read from the state
folder without pydantic-settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

SERVER = ["fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "pydantic_settings", "prometheus_client",
          "psycopg"]
CLIENT = ["torch"]

RUN_WITHOUT = """
import importlib.abc, sys
BLOCKED = set({blocked!r})
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Missing())
from mfcpl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def mfcpl_without(blocked: list[str], *args: str, cwd: Path, env: dict[str, str] | None = None,
                  ) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MFCPL_")} | (env or {})
    return subprocess.run([sys.executable, "-c", RUN_WITHOUT.format(blocked=sorted(blocked)), *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=120)


def assert_names_extra(done: subprocess.CompletedProcess[str], command: str, extra: str) -> None:
    assert done.returncode == 2, done.stderr
    assert f"{command} needs the {extra} extra: pip install 'mfcpl[{extra}]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr


@pytest.mark.parametrize(("args", "command"), [
    (["serve"], "mfcpl serve"),
    (["serve", "--workers", "2", "--port", "1"], "mfcpl serve"),
    (["db", "upgrade"], "mfcpl db upgrade"),
    (["db", "current"], "mfcpl db current"),
])
def test_server_commands_name_the_server_extra(args: list[str], command: str, tmp_path: Path) -> None:
    done = mfcpl_without(SERVER, *args, cwd=tmp_path, env={"MFCPL_STATE_DIR": str(tmp_path / "state")})
    assert_names_extra(done, command, "server")
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(("args", "command"), [
    (["simulate", "--quick"], "mfcpl simulate"),
    (["simulate", "--in-process", "--quick"], "mfcpl simulate"),
    (["sweep", "--seeds", "1"], "mfcpl sweep"),
    (["client", "run", "--data", "uci_har:s05_k2", "--token", "t", "--federation", "f"], "mfcpl client run"),
])
def test_training_commands_name_the_client_extra(args: list[str], command: str, tmp_path: Path) -> None:
    assert_names_extra(mfcpl_without(CLIENT, *args, cwd=tmp_path), command, "client")


def test_help_and_table_only_modes_need_no_torch(tmp_path: Path) -> None:
    for args in (["simulate", "--help"], ["client", "--help"],
                 ["sweep", "--table-only", "--results-dir", str(tmp_path / "results")]):
        done = mfcpl_without(CLIENT + SERVER, *args, cwd=tmp_path)
        assert done.returncode == 0, (args, done.stderr)


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        type(self).seen.append(f"{self.path} {self.headers.get('Authorization')}")
        body = json.dumps([]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_coordinator() -> Iterator[tuple[str, list[str]]]:
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("variable", ["MFCPL_STATE_DIR", "MFCPL_DATA_DIR"])
def test_operator_commands_need_only_the_base_install(variable: str, fake_coordinator: tuple[str, list[str]],
                                                      tmp_path: Path) -> None:
    url, seen = fake_coordinator
    state = tmp_path / "state"
    state.mkdir()
    (state / "admin_token").write_text("mfcpl_a_from_the_file\n")
    done = mfcpl_without(SERVER + CLIENT, "federation", "list", "--json", "--server", url, cwd=tmp_path,
                         env={variable: str(state)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    assert seen == ["/v1/federations Bearer mfcpl_a_from_the_file"]


def test_operator_token_from_dotenv_and_a_clear_message_without_one(fake_coordinator: tuple[str, list[str]],
                                                                     tmp_path: Path) -> None:
    url, seen = fake_coordinator
    nothing = mfcpl_without(SERVER, "federation", "list", "--server", url, cwd=tmp_path)
    assert nothing.returncode == 1 and "no admin token" in nothing.stderr and "Traceback" not in nothing.stderr
    (tmp_path / ".env").write_text("MFCPL_ADMIN_TOKEN='from-dotenv'\n")
    done = mfcpl_without(SERVER, "federation", "list", "--server", url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert seen == ["/v1/federations Bearer from-dotenv"]


def test_unreachable_coordinator_is_one_line(tmp_path: Path) -> None:
    done = mfcpl_without(SERVER, "federation", "list", "--server", "http://127.0.0.1:9", "--token", "t", cwd=tmp_path)
    assert done.returncode == 1 and "cannot reach the coordinator at http://127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_lazily_imported_library_names_its_extra(tmp_path: Path) -> None:
    done = mfcpl_without(["matplotlib"], "sweep", "--table-only", "--results-dir", str(tmp_path / "results"),
                         "--curves", str(tmp_path / "curves.png"), cwd=tmp_path)
    assert_names_extra(done, "mfcpl sweep", "plots")


@pytest.mark.parametrize(("module", "extra", "code"), [
    ("matplotlib", "plots", "import mfcpl.experiments.plots"),
    ("transformers", "text", "from client_sdk.model import TextEncoder; TextEncoder('/nowhere', 8, False)"),
])
def test_optional_libraries_fail_naming_their_extra(module: str, extra: str, code: str, tmp_path: Path) -> None:
    script = RUN_WITHOUT.format(blocked=[module]).split("from mfcpl.cli")[0] + code
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"the `{extra}` extra: pip install 'mfcpl[{extra}]'" in done.stderr, done.stderr
