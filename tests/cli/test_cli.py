"""The ``mfcpl`` command as an operator uses it: subprocesses against a real coordinator (status, rounds, metrics,
watch, federation list), the help of every command and option, a closed pipe, and the progress of simulate."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mfcpl.cli import _enroll_parser, build_parser, client_parser, main
from mfcpl.experiments.cli import simulate_parser, sweep_parser
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

ROOT = Path(__file__).resolve().parents[2]
DATA = Path("/work/shared/data")


def mfcpl(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MFCPL_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "mfcpl", *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout)


def operator_env(coordinator: CoordinatorProcess) -> dict[str, str]:
    return {"MFCPL_SERVER_URL": coordinator.base_url, "MFCPL_ADMIN_TOKEN": coordinator.admin_token}


def run_federation(coordinator: CoordinatorProcess, fid: str, names: list[str], rounds: int,
                   start_after: threading.Event | None = None) -> None:
    """Drive ``rounds`` rounds: every client trains (a known update) each round."""
    model = small_model()
    with coordinator.client(coordinator.admin_token) as admin:
        clients = [enroll(admin, fid, name) for name in names]
        try:
            if start_after is not None:
                start_after.wait(30)
            for number in range(1, rounds + 1):
                for i, client in enumerate(clients):
                    task = wait_task(client, fid)
                    assert task["round"] == number, task
                    _, body = known_update(model, seed=10 * number + i, num_samples=5 + i,
                                           base_version=number - 1, metrics={"loss": 1.0 / number})
                    assert post_update(client, fid, number, body).status_code in (200, 201, 202)
                wait_round_state(admin, fid, number)
        finally:
            for client in clients:
                client.close()


def test_status_rounds_and_metrics_tables_and_json(coordinator: CoordinatorProcess) -> None:
    env = operator_env(coordinator)
    with coordinator.client(coordinator.admin_token) as admin:
        fid = create_federation(admin, small_model(), name="tables", rounds=1, clients_per_round=2)
    run_federation(coordinator, fid, ["a", "b"], rounds=1)

    listed = mfcpl("federation", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()[:2]
    assert header.split()[:3] == ["ID", "NAME", "STATUS"] and row.split()[:4] == [fid, "tables", "completed", "1/1"]
    assert [f["id"] for f in json.loads(mfcpl("federation", "list", "--json", env=env).stdout)] == [fid]

    status = mfcpl("federation", "status", fid, env=env)
    assert status.returncode == 0, status.stderr
    assert any(line.split() == ["status", "completed"] for line in status.stdout.splitlines()), status.stdout
    assert "1 of 1" in status.stdout
    assert json.loads(mfcpl("federation", "status", fid, "--json", env=env).stdout)["status"] == "completed"

    rounds = mfcpl("rounds", fid, env=env)
    assert rounds.returncode == 0, rounds.stderr
    lines = rounds.stdout.splitlines()
    assert lines[0].split()[:3] == ["ROUND", "STATE", "RECEIVED"] and lines[1].split()[:3] == ["1", "closed", "2/2"]
    assert json.loads(mfcpl("rounds", fid, "--json", env=env).stdout)[0]["state"] == "closed"

    metrics = mfcpl("metrics", fid, env=env)
    assert metrics.returncode == 0, metrics.stderr
    header = metrics.stdout.splitlines()[0]
    assert "train_loss" in header, metrics.stdout
    history = json.loads(mfcpl("metrics", fid, "--json", "--last", "1", env=env).stdout)
    assert [m["round"] for m in history] == [1] and history[0]["train"]["loss"] == pytest.approx(1.0)

    missing = mfcpl("federation", "status", "no-such-federation", env=env)
    assert missing.returncode == 1 and "error 404" in missing.stderr and "Traceback" not in missing.stderr


def test_watch_follows_a_federation_to_its_end(coordinator: CoordinatorProcess) -> None:
    with coordinator.client(coordinator.admin_token) as admin:
        fid = create_federation(admin, small_model(), name="watched", rounds=2, clients_per_round=2)
    go = threading.Event()
    driver = threading.Thread(target=run_federation, args=(coordinator, fid, ["a", "b"], 2, go), daemon=True)
    driver.start()
    started = time.monotonic()
    watch = subprocess.Popen([sys.executable, "-m", "mfcpl", "watch", fid], cwd=ROOT, text=True,
                             env={**os.environ, **operator_env(coordinator)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        go.set()
        out, err = watch.communicate(timeout=90)
    finally:
        watch.kill()
    driver.join(30)
    assert watch.returncode == 0, err
    assert time.monotonic() - started < 90
    assert f"watching {fid} (watched)" in out
    for expected in ("round 1 opened: 2 participants", "round 1: update 2/2 received", "round 1 closed: 2 updates",
                     "round 2 closed", "status: completed", f"federation {fid} completed at round 2 of 2"):
        assert expected in out, out
    assert "Traceback" not in err

    as_json = mfcpl("watch", fid, "--json", env=operator_env(coordinator))  # a finished federation: replays, ends
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert as_json.returncode == 0 and events[-1]["data"]["status"] == "completed"
    assert {"round.opened", "round.closed", "update.received"} <= {e["type"] for e in events}


def test_watch_ctrl_c_ends_cleanly(coordinator: CoordinatorProcess) -> None:
    with coordinator.client(coordinator.admin_token) as admin:
        fid = create_federation(admin, small_model(), name="interrupted")  # waits: no clients
    watch = subprocess.Popen([sys.executable, "-m", "mfcpl", "watch", fid], cwd=ROOT, text=True,
                             env={**os.environ, **operator_env(coordinator)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        assert watch.stdout is not None
        assert watch.stdout.readline().startswith(f"watching {fid}")
        watch.send_signal(2)  # SIGINT, as Ctrl-C
        out, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 130 and "Traceback" not in err and "stopped watching" in err


def test_federation_list_into_head_has_no_traceback(coordinator: CoordinatorProcess) -> None:
    with coordinator.client(coordinator.admin_token) as admin:
        for i in range(40):
            create_federation(admin, name=f"many-{i}")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MFCPL_")}, **operator_env(coordinator)}
    command = f"'{sys.executable}' -m mfcpl federation list --json | head -1; exit ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout == "[\n"
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 0


def test_version() -> None:
    done = mfcpl("--version")
    assert done.returncode == 0 and done.stdout.startswith("mfcpl ")


def _parsers(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _parsers(child, f"{path} {name}")
    return found


def all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    return (_parsers(build_parser(), "mfcpl") + _parsers(client_parser(), "mfcpl client")
            + [("mfcpl client enroll", _enroll_parser()), ("mfcpl simulate", simulate_parser()),
               ("mfcpl sweep", sweep_parser())])


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, parser in all_parsers():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{path} {c.dest}" for c in action._choices_actions if not c.help]
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_every_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    paths = sorted({path.removeprefix("mfcpl").strip() for path, _ in all_parsers()})
    for path in paths:
        try:
            code = main([*path.split(), "--help"])
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        assert code == 0, path
    client = mfcpl("client", "--help")
    assert client.returncode == 0 and "enroll" in client.stdout and "run" in client.stdout
    assert "exit status" in mfcpl("--help").stdout


@pytest.mark.skipif(not DATA.is_dir(), reason=f"UCI-HAR data not at {DATA}")
def test_simulate_shows_setup_steps_and_an_eta(tmp_path: Path) -> None:
    done = mfcpl("simulate", "--in-process", "--quick", "--rounds", "2", "--data-dir", str(DATA),
                 "--out", str(tmp_path / "run"), "--workers", "1", timeout=600)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for step in ("setup: loading uci_har", "setup: starting 1 worker process", "setup: done in"):
        assert step in out, out
    rounds = [line for line in out.splitlines() if line.startswith("round ")]
    assert len(rounds) == 2 and all("ETA" in line for line in rounds), out
    assert rounds[-1].endswith("ETA 0s") and "\r" not in out
    assert "test macro-F1 at best dev" in out


def test_viewer_tokens(coordinator: CoordinatorProcess) -> None:
    env = operator_env(coordinator)
    minted = mfcpl("viewer-token", "create", "--label", "lab dashboard", "--json", env=env)
    assert minted.returncode == 0, minted.stderr
    token = json.loads(minted.stdout)
    assert token["label"] == "lab dashboard" and token["token"]
    human = mfcpl("viewer-token", "create", "--label", "second", env=env)
    assert human.returncode == 0 and "shown only now" in human.stdout
    listed = mfcpl("viewer-token", "list", env=env)
    assert listed.returncode == 0 and token["id"] in listed.stdout and token["token"] not in listed.stdout
    revoked = mfcpl("viewer-token", "revoke", token["id"], "--json", env=env)
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked"] is True
    rows = {t["id"]: t for t in json.loads(mfcpl("viewer-token", "list", "--json", env=env).stdout)}
    assert rows[token["id"]]["revoked"] is True
    with coordinator.client(token["token"]) as viewer:
        assert viewer.get("/v1/federations").status_code == 401
