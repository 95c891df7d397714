"""Federated normalization without anyone holding the training data: each site runs ``mfcpl client stats`` on
its own data, the operator creates the federation from ``layout.json`` alone with ``--stats-from``. The result
must equal the statistics of the pooled training clients, and nothing but aggregates may be in a stats file."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from client_sdk.data import load_federation
from client_sdk.data.normalize import federated_normalization
from mfcpl.wire.schemas import FederationCreate
from tests.cli.test_cli import mfcpl
from tests.data.generated import write_generated_dataset

SITES = [f"site{i}" for i in range(4)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stats") / "gen"
    write_generated_dataset(root, num_samples=200, num_groups=4)
    return root


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return mfcpl(*args, timeout=300)


@pytest.fixture(scope="module")
def stats_files(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("sums")
    files = []
    for site in SITES:
        file = out / f"{site}.json"
        done = _run("client", "stats", "--dataset", str(dataset), "--client", site, "--partition", "group",
                    "--out", str(file))
        assert done.returncode == 0, done.stderr
        files.append(file)
    return files


def test_a_stats_file_holds_aggregates_only(stats_files: list[Path], dataset: Path) -> None:
    raw = json.loads(stats_files[0].read_text())
    assert raw["format"] == "mfcpl-feature-sums/1"
    assert set(raw["modalities"]) == {"stats", "motion", "words"}
    for part in raw["modalities"].values():
        assert set(part) == {"count", "sum", "sum_squares"}
        assert len(part["sum"]) == len(part["sum_squares"]) <= 17  # one number per feature, not per sample
    site0 = load_federation(str(dataset), partition="group").client("site0").data
    assert raw["modalities"]["stats"]["count"] == int(site0.present["stats"].sum())


def test_create_from_layout_and_sums_equals_the_pooled_statistics(
        dataset: Path, stats_files: list[Path], tmp_path: Path) -> None:
    layout_only = tmp_path / "layout_only"
    layout_only.mkdir()
    shutil.copy(dataset / "layout.json", layout_only / "layout.json")
    done = _run("federation", "create", "--from-dataset", str(layout_only), "--stats-from",
                *map(str, stats_files), "--dry-run")
    assert done.returncode == 0, done.stderr
    config = FederationCreate.model_validate_json(done.stdout)
    expected = federated_normalization(load_federation(str(dataset), partition="group"))
    assert config.normalization.mode == "federated" and config.normalization.stats is not None
    assert expected.stats is not None
    for name, stats in expected.stats.items():
        got = config.normalization.stats[name]
        np.testing.assert_allclose(got.mean, stats.mean, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got.std, stats.std, rtol=1e-9, atol=1e-9)
        assert got.count == stats.count
    assert config.clients_per_round == len(SITES)


def test_bad_stats_files_are_one_line_errors(dataset: Path, stats_files: list[Path], tmp_path: Path) -> None:
    not_sums = tmp_path / "not_sums.json"
    not_sums.write_text('{"hello": 1}')
    wider = json.loads(stats_files[0].read_text())
    wider["modalities"]["stats"]["sum"].append(1.0)
    wider["modalities"]["stats"]["sum_squares"].append(1.0)
    wrong_width = tmp_path / "wide.json"
    wrong_width.write_text(json.dumps(wider))
    for files, message in (([not_sums], "not a feature-sums file"),
                           ([wrong_width], "'stats' has 18 features, the layout says 17"),
                           ([tmp_path / "missing.json"], "missing.json")):
        done = _run("federation", "create", "--from-dataset", str(dataset), "--stats-from", *map(str, files),
                    "--dry-run")
        assert done.returncode == 2, done.stdout
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    done = _run("federation", "create", "--from-dataset", str(dataset), "--stats-from", str(stats_files[0]),
                "--normalization", "client", "--dry-run")
    assert done.returncode == 2 and "does not go with --normalization client" in done.stderr, done.stderr
