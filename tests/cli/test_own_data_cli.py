"""Bring your own data, with the CLI only: ``mfcpl federation create --from-dataset``, ``mfcpl model init`` and
``mfcpl evaluate`` as subprocesses against a real coordinator on loopback, on the generated data set
(tests/data/generated.py: a pooled train file with a group column, no dev file, a test file)."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from client_sdk.client import MfcplClient
from client_sdk.data import load_federation
from client_sdk.data.features import LAYOUT_FILE, load_feature_file
from client_sdk.data.normalize import normalize_arrays
from mfcpl.cli import main
from mfcpl.wire.schemas import FederationCreate, ModalityKind, TaskAction
from tests.cli.test_cli import ROOT, mfcpl, operator_env
from tests.data.generated import GENERATED_LAYOUT, write_generated_dataset
from tests.support.coordinator import CoordinatorProcess

# A model small enough that a round trains in well under a second on one core.
SMALL = ["--set", "model.hidden_dim=16", "--set", "model.proj_dim=16", "--set", "model.attention_dim=16",
         "--set", "model.attention_heads=2", "--set", "model.classifier_hidden=16", "--set", "model.dropout=0.0"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    """One SQLite coordinator for the module (every test makes its own federations)."""
    work = tmp_path_factory.mktemp("coordinator")
    proc = CoordinatorProcess(f"sqlite:///{work / 'mfcpl.db'}", work / "data", tick_s=0.1)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own-data") / "gen"
    write_generated_dataset(root)
    return root


def in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str],
               *args: str) -> subprocess.CompletedProcess[str]:
    """``mfcpl ARGS`` in this process (torch is imported once here; a subprocess pays that each time)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as stop:  # argparse, and the operator commands' "error ..." exits
        code = stop.code if isinstance(stop.code, int) else 1
        if not isinstance(stop.code, int) and stop.code is not None:
            print(stop.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["mfcpl", *args], code, out, err)


def _created(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def _training_stats(dataset: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Mean, std and row count per standardised modality over the training clients, computed here directly:
    present samples only, and for sequences the rows that are not padding (never the dev cut or the test file)."""
    clients = load_federation(str(dataset), seed=seed).clients
    out = {}
    for spec in GENERATED_LAYOUT.modalities:
        rows = []
        for client in clients:
            x = client.data.inputs[spec.name][client.data.present[spec.name]].astype(np.float64)
            if spec.kind is not ModalityKind.VECTOR:
                x = x.reshape(-1, x.shape[-1])
                x = x[np.any(x != 0, axis=-1)]
            rows.append(x)
        pooled = np.concatenate(rows)
        out[spec.name] = (pooled.mean(axis=0), pooled.std(axis=0), len(pooled))
    return out


def test_dry_run_derives_the_config_and_training_statistics(server: CoordinatorProcess, dataset: Path) -> None:
    env = operator_env(server)
    before = json.loads(mfcpl("federation", "list", "--json", env=env).stdout)
    dry = mfcpl("federation", "create", "--from-dataset", str(dataset), "--dry-run", "--rounds", "7",
                "--set", "training.lambda_cmpr=0.5", env=env)
    config = FederationCreate.model_validate(_created(dry))
    assert json.loads(mfcpl("federation", "list", "--json", env=env).stdout) == before  # nothing created

    assert config.name == "generated" and config.num_classes == 4
    assert config.class_names == ["north", "east", "south", "west"]
    assert [(m.name, m.kind, m.shape) for m in config.modalities] == [
        ("stats", "vector", [17]), ("motion", "timeseries", [20, 5]), ("words", "tokens", [7, 6])]
    assert config.rounds == 7 and config.training.lambda_cmpr == 0.5 and config.seed == 0
    assert config.clients_per_round == 6  # min(10, the six sites)
    assert config.normalization.mode == "federated" and config.normalization.stats is not None
    expected = _training_stats(dataset)
    assert set(config.normalization.stats) == set(expected)
    for name, (mean, std, count) in expected.items():
        stats = config.normalization.stats[name]
        np.testing.assert_allclose(stats.mean, mean, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(stats.std, std, rtol=1e-9, atol=1e-9)
        assert stats.count == count
    # the 20% dev cut is not training data: counting it too would give other statistics
    everything = load_federation(str(dataset), seed=0, dev_fraction=0.0).clients
    all_rows = sum(int(c.data.present["stats"].sum()) for c in everything)
    assert config.normalization.stats["stats"].count < all_rows

    other = _created(mfcpl("federation", "create", "--from-dataset", str(dataset), "--dry-run", "--seed", "3",
                           "--dev-fraction", "0.5", "--normalization", "client", "--name", "mine", env=env))
    assert other["name"] == "mine" and other["seed"] == 3
    assert other["normalization"]["mode"] == "client" and not other["normalization"].get("stats")


def test_bad_folders_and_options_exit_2_with_one_line(server: CoordinatorProcess, dataset: Path,
                                                      tmp_path: Path) -> None:
    env = operator_env(server)
    no_layout = tmp_path / "no-layout"
    no_layout.mkdir()
    bad_layout = tmp_path / "bad-layout"
    shutil.copytree(dataset, bad_layout)
    (bad_layout / LAYOUT_FILE).write_text('{"name": "x", "modalities": []}')
    no_test = tmp_path / "no-test"
    shutil.copytree(dataset, no_test)
    (no_test / "test.safetensors").unlink()
    cases = [
        ([str(tmp_path / "missing")], "no such folder"),
        ([str(no_layout)], "no layout.json"),
        ([str(bad_layout)], "layout.json"),
        ([str(no_test)], "no test set"),
        ([str(dataset), "--alpha", "0.3"], "alpha applies to partition=dirichlet only"),
        ([str(dataset), "--set", "training.no_such_setting=1"], "training.no_such_setting"),
        ([str(dataset), "--set", "rounds"], "KEY=VALUE"),
    ]
    for args, message in cases:
        result = mfcpl("federation", "create", "--from-dataset", *args, env=env)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert result.stderr.startswith("mfcpl federation create: ") and result.stderr.count("\n") == 1
    mixed = mfcpl("federation", "create", "--file", str(tmp_path / "fed.json"), "--name", "x", env=env)
    assert mixed.returncode == 2 and "--name only with --from-dataset" in mixed.stderr
    assert mfcpl("federation", "create", env=env).returncode == 2  # neither --file nor --from-dataset


def test_create_then_model_init_uploads_the_seeded_model(server: CoordinatorProcess, dataset: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from client_sdk.model import build_model
    from client_sdk.torch_io import model_to_numpy

    env = operator_env(server)
    fed = _created(mfcpl("federation", "create", "--from-dataset", str(dataset), "--algorithm", "fedavg",
                         "--clients-per-round", "2", *SMALL, env=env))
    fid = fed["id"]
    assert fed["latest_model_version"] is None and fed["config"]["algorithm"] == "fedavg"
    with MfcplClient(server.base_url, server.admin_token) as admin:
        stored = admin.federations.get(fid).config
    assert stored.normalization.mode == "federated" and stored.normalization.stats is not None
    for name, (mean, std, _) in _training_stats(dataset).items():  # the coordinator keeps the statistics
        np.testing.assert_allclose(stored.normalization.stats[name].mean, mean, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(stored.normalization.stats[name].std, std, rtol=1e-9, atol=1e-9)
    assert stored.model.hidden_dim == 16 and stored.clients_per_round == 2

    no_model = in_process(monkeypatch, capsys, env, "evaluate", fid, "--data", str(dataset))
    assert no_model.returncode == 1 and "has no model yet" in no_model.stderr

    init = mfcpl("model", "init", fid, "--seed", "3", env=env)
    version = _created(init)
    assert version["version"] == 0 and version["round"] is None
    assert "uploaded as version 0" in init.stderr
    config = FederationCreate.model_validate(fed["config"])
    expected = model_to_numpy(build_model(config, seed=3))
    with MfcplClient(server.base_url, server.admin_token) as admin:
        downloaded = admin.models.download(fid, 0).weights
    assert set(downloaded) == set(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(downloaded[name], array, err_msg=name)

    same = in_process(monkeypatch, capsys, env, "model", "init", fid, "--seed", "3")
    assert same.returncode == 0 and json.loads(same.stdout)["sha256"] == version["sha256"]  # the same v0 again
    again = in_process(monkeypatch, capsys, env, "model", "init", fid, "--seed", "4")
    assert again.returncode == 1 and "409" in again.stderr and "already exists" in again.stderr
    missing = in_process(monkeypatch, capsys, env, "model", "init", "fed_does_not_exist")
    assert missing.returncode == 1 and "404" in missing.stderr


def _read_line(stream: object, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.2)
        if ready:
            return stream.readline()  # type: ignore[attr-defined]
    raise TimeoutError(f"no line within {timeout_s}s")


def _train_rounds(server: CoordinatorProcess, fid: str, config: FederationCreate, dataset: Path,
                  rounds: int) -> None:
    """Two sites train every round through the SDK's perform_task, their data standardised as the federation says."""
    from client_sdk.node import LocalModel, client_profile, perform_task

    shards = {c.name: c.data for c in load_federation(str(dataset), seed=config.seed).clients[:2]}
    with MfcplClient(server.base_url, server.admin_token) as admin:
        tokens = {name: admin.clients.enroll(fid, name).token for name in shards}
    nodes = {name: MfcplClient(server.base_url, token) for name, token in tokens.items()}
    local = LocalModel(config, threads=1)
    try:
        data = {name: normalize_arrays(d, config.normalization, config.modalities) for name, d in shards.items()}
        for name, node in nodes.items():
            node.clients.report_profile(fid, client_profile(data[name], config.num_classes))
        for number in range(1, rounds + 1):
            pending = set(nodes)
            deadline = time.monotonic() + 30
            while pending:
                assert time.monotonic() < deadline, f"round {number}: {pending} got no task"
                for name in sorted(pending):
                    task = nodes[name].tasks.next(fid)
                    if task.action == TaskAction.TRAIN and task.round == number:
                        perform_task(nodes[name], fid, task, data[name], local)
                        pending.discard(name)
                time.sleep(0.05)
    finally:
        for node in nodes.values():
            node.close()


def test_evaluate_follows_rounds_and_records_scores(server: CoordinatorProcess, dataset: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from client_sdk.model import build_model
    from client_sdk.torch_io import load_numpy_weights
    from client_sdk.trainer import evaluate

    env = operator_env(server)
    fed = _created(mfcpl("federation", "create", "--from-dataset", str(dataset), "--rounds", "2",
                         "--clients-per-round", "2", "--init-model", *SMALL, env=env))
    fid, config = fed["id"], FederationCreate.model_validate(fed["config"])
    assert fed["latest_model_version"] == 0

    follow = subprocess.Popen([sys.executable, "-m", "mfcpl", "evaluate", fid, "--data", str(dataset), "--follow",
                               "--json", "--poll", "5", "--timeout", "120"], cwd=ROOT, text=True,
                              env={k: v for k, v in os.environ.items() if not k.startswith("MFCPL_")} | env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = json.loads(_read_line(follow.stdout, 60))  # version 0 is scored before any round exists
        assert first["version"] == 0 and first["round"] is None and first["recorded"] is False
        _train_rounds(server, fid, config, dataset, rounds=2)
        out, err = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["round"], r["version"], r["split"], r["recorded"]) for r in rows] == [
        (1, 1, "test", True), (2, 2, "test", True)]
    assert "waiting for the next model" in err and f"federation {fid} completed" in err

    # The recorded scores are those of the version each round produced, on the test file standardised with
    # the federation's statistics.
    test = normalize_arrays(load_feature_file(dataset / "test.safetensors", GENERATED_LAYOUT), config.normalization,
                            config.modalities)
    model = build_model(config)
    with MfcplClient(server.base_url, server.admin_token) as admin:
        history = {m.round: m for m in admin.metrics.history(fid)}
        assert {v.version: v.round for v in admin.models.list(fid)} == {0: None, 1: 1, 2: 2}
        for number in (1, 2):
            load_numpy_weights(model, admin.models.download(fid, number).weights)
            expected = evaluate(model, test, config.num_classes, threads=1)
            recorded = history[number].evaluations["test"]
            for key in ("accuracy", "macro_f1", "loss"):
                assert recorded[key] == pytest.approx(expected[key], rel=1e-5), (number, key)

    # The dev set of a folder without a dev file: load_federation's 20% cut, recorded under "dev".
    dev = in_process(monkeypatch, capsys, env, "evaluate", fid, "--data", str(dataset), "--split", "dev",
                     "--version", "1", "--json")
    [dev_row] = _created(dev)
    dev_set = load_federation(str(dataset), seed=config.seed).dev
    assert dev_row["samples"] == len(dev_set) > 0 and dev_row["recorded"] is True
    table = in_process(monkeypatch, capsys, env, "metrics", fid)
    assert "dev_macro_f1" in table.stdout.splitlines()[0] and "test_macro_f1" in table.stdout.splitlines()[0]
    with MfcplClient(server.base_url, server.admin_token) as admin:
        assert admin.metrics.history(fid)[0].evaluations["dev"]["macro_f1"] == pytest.approx(
            dev_row["metrics"]["macro_f1"])

    # One feature file scores like the folder's test set; version 0 is shown, never recorded.
    single = in_process(monkeypatch, capsys, env, "evaluate", fid, "--data", str(dataset / "test.safetensors"),
                        "--all", "--no-record")
    assert single.returncode == 0, single.stderr
    lines = single.stdout.splitlines()
    assert lines[0].split()[:4] == ["ROUND", "VERSION", "SPLIT", "SAMPLES"]
    assert [line.split()[:2] for line in lines[1:]] == [["-", "0"], ["1", "1"], ["2", "2"]]
    assert "no (version 0: no round)" in lines[1] and lines[3].split()[-1] == "no"
    assert float(lines[3].split()[5]) == pytest.approx(history[2].evaluations["test"]["macro_f1"], abs=1e-4)

    # Data that is not the federation's: exit 2, naming the difference.
    other = dataset.parent / "other"
    other.mkdir(exist_ok=True)
    shutil.copy(dataset / "test.safetensors", other / "test.safetensors")
    layout = json.loads((dataset / LAYOUT_FILE).read_text())
    layout["modalities"][0]["shape"] = [16]
    (other / LAYOUT_FILE).write_text(json.dumps(layout))
    wrong = in_process(monkeypatch, capsys, env, "evaluate", fid, "--data", str(other / "test.safetensors"))
    assert wrong.returncode == 2 and "are not the federation's" in wrong.stderr


def test_base_install_derives_the_config_and_names_the_client_extra(dataset: Path, tmp_path: Path) -> None:
    """Without torch and the server packages: --dry-run works; model init, evaluate and --init-model exit 2
    naming the client extra, before anything is created."""
    from tests.packaging.test_missing_extras import CLIENT, SERVER, assert_names_extra, mfcpl_without

    dry = mfcpl_without(SERVER + CLIENT, "federation", "create", "--from-dataset", str(dataset), "--dry-run",
                        cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["normalization"]["mode"] == "federated"
    operator = ["--server", "http://127.0.0.1:9", "--token", "t"]  # nothing listens there: nothing is created
    for args, command in (
        (["model", "init", "fed_x"], "mfcpl model init"),
        (["evaluate", "fed_x", "--data", str(dataset)], "mfcpl evaluate"),
        (["federation", "create", "--from-dataset", str(dataset), "--init-model"],
         "mfcpl federation create --init-model"),
    ):
        assert_names_extra(mfcpl_without(CLIENT, *args, *operator, cwd=tmp_path), command, "client")
