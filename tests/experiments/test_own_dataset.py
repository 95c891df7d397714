"""A user's own data set through ``mfcpl simulate`` / ``mfcpl sweep`` / ``mfcpl reference`` by folder path.

The data set is generated (tests/data/generated.py): three modalities of kinds, shapes and scales unlike
UCI-HAR (a 17-feature vector around 500, a [20, 5] series with padding, [7, 6] token features), 4 classes,
pooled with site groups. Runs go through the real CLI entry points and a real embedded coordinator.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mfcpl.experiments.cli import simulate_main, sweep_main
from mfcpl.experiments.config import ExperimentConfig
from mfcpl.experiments.runner import prepare_data
from tests.data.generated import write_generated_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own") / "sites"
    write_generated_dataset(root, num_samples=360, num_groups=6, test_samples=80)
    return root


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mfcpl.experiments.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def test_simulate_over_http_with_a_folder_dirichlet_partition_and_federated_normalization(
        dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = simulate_main(["--dataset", str(dataset), "--partition", "dirichlet", "--num-clients", "5",
                          "--alpha", "0.5", "--algorithm", "mfcpl", "--missing-rate", "0.5", "--rounds", "3",
                          "--clients-per-round", "3", "--eval-every", "1", "--workers", "1", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["run_id"].startswith("sites_client_q050_mfcpl_s1_r3_")
    assert result["data"]["normalization"] == "federated"
    assert result["data"]["client_count"] == 5
    assert {k: result["data"][k] for k in ("partition", "num_clients", "alpha", "seed", "dev_fraction")} == {
        "partition": "dirichlet", "num_clients": 5, "alpha": 0.5, "seed": 1, "dev_fraction": 0.2}
    assert [e["round"] for e in result["history"]] == [1, 2, 3]
    assert all(np.isfinite(e["test_macro_f1"]) for e in result["history"])
    server = json.loads((out / "server_metrics.json").read_text())
    assert [r["state"] for r in server] == ["closed"] * 3


def test_the_federation_config_records_statistics_of_the_clients_training_data_only(dataset: Path) -> None:
    from client_sdk.data import load_federation

    cfg = ExperimentConfig(dataset=str(dataset), partition="group")
    federation, _, normalization = prepare_data(cfg)
    assert normalization.mode == "federated" and normalization.stats is not None
    raw = load_federation(str(dataset), partition="group", seed=1)
    stats = np.concatenate([c.data.inputs["stats"][c.data.present["stats"]] for c in raw.clients])
    np.testing.assert_allclose(normalization.stats["stats"].mean, stats.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(normalization.stats["stats"].std, stats.std(axis=0), rtol=1e-4)
    # Every split went through the same transform: the clients' present features are standardised...
    pooled = np.concatenate([c.data.inputs["stats"][c.data.present["stats"]] for c in federation.clients])
    np.testing.assert_allclose(pooled.mean(axis=0), 0.0, atol=1e-3)
    # ...and the test set with the training statistics (not its own): its raw mean maps through them.
    raw_test = raw.test.inputs["stats"][raw.test.present["stats"]]
    expected = (raw_test.mean(axis=0) - np.array(normalization.stats["stats"].mean)) / np.array(
        normalization.stats["stats"].std)
    got = federation.test.inputs["stats"][federation.test.present["stats"]].mean(axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_group_partition_gives_one_client_per_site_and_is_recorded(dataset: Path) -> None:
    federation, _, _ = prepare_data(ExperimentConfig(dataset=str(dataset), partition="group",
                                                     normalization="none"))
    assert sorted(c.name for c in federation.clients) == [f"site{i}" for i in range(6)]


def test_options_that_do_not_apply_are_refused_with_one_line(dataset: Path) -> None:
    for args in (["--subjects", "1,2"], ["--alpha", "0.3"], ["--partition", "group", "--num-clients", "4"]):
        done = _cli("simulate", "--dataset", str(dataset), "--rounds", "1", "--in-process", *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().startswith("mfcpl simulate: data set"), done.stderr


def test_an_unknown_name_and_a_missing_folder_are_one_line_errors(tmp_path: Path) -> None:
    for name in ("no_such_set", str(tmp_path / "nowhere")):
        done = _cli("simulate", "--dataset", name, "--rounds", "1", "--in-process")
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and name in done.stderr, done.stderr


def test_sweep_names_runs_after_the_folder(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = sweep_main(["--dataset", str(dataset), "--partition", "iid", "--num-clients", "4", "--methods",
                       "fedavg,fedproto", "--seeds", "1,2", "--rates", "0.5", "--dry-run",
                       "--results-dir", str(tmp_path / "results")])
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("todo")]
    assert len(lines) == 4 and all(" sites_client_q050_" in line for line in lines)


def test_reference_scores_the_pooled_training_data(dataset: Path, tmp_path: Path) -> None:
    done = _cli("reference", "--dataset", str(dataset), "--partition", "group", "--epochs", "3", "--out",
                str(tmp_path))
    assert done.returncode == 0, done.stderr
    ref = json.loads((tmp_path / "reference.json").read_text())
    assert ref["train_samples"] > 0 and ref["normalization"] == "federated"
    assert len(ref["model"]["history"]) == 3
    assert ref["linear"]["test"]["macro_f1"] > 0.4  # chance is 0.25: the class is visible in every modality
