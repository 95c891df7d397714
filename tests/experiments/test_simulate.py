"""The experiment runner end to end: a real embedded coordinator (uvicorn, SQLite) and worker processes.

The protocol of docs/method.md sits at one predicted class for 50-80 rounds, so the learning test uses settings
chosen to learn within a short CI run (stated here, not the paper's): 4 subjects as 4 whole clients (a few
hundred windows each) with 3 local epochs per round, instead of 105 small shards with one epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mfcpl.experiments.cli import simulate_main, sweep_main
from mfcpl.experiments.config import ExperimentConfig, federation_config
from mfcpl.experiments.runner import prepare_data, run_experiment, run_experiment_inprocess

DATA_DIR = str(Path(__file__).resolve().parents[2].parent / "shared" / "data")

LEARNS_QUICKLY = {
    "subjects": [1, 3, 5, 6],
    "shards_per_subject": 1,
    "alpha": 5.0,
    "clients_per_round": 4,
    "eval_every": 2,
    "training": {"local_epochs": 3},
    "data_dir": DATA_DIR,
}


def _config(**overrides: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate({**LEARNS_QUICKLY, **overrides})


def _untrained_test_f1(cfg: ExperimentConfig) -> float:
    from client_sdk.model import build_model
    from client_sdk.trainer import evaluate

    federation, _, _ = prepare_data(cfg)
    config = federation_config(cfg, federation, len(federation.clients))
    model = build_model(config, seed=cfg.seed)
    return evaluate(model, federation.test, config.num_classes)["macro_f1"]


def test_short_mfcpl_run_over_http_learns(tmp_path: Path) -> None:
    cfg = _config(algorithm="mfcpl", rounds=5, seed=1)
    result = run_experiment(cfg, tmp_path / "run", workers=2, progress=lambda _: None)

    assert [e["round"] for e in result.history] == list(range(1, 6))
    assert all(e["received"] == e["participants"] == 4 for e in result.history)
    f1 = result.test_at_best_dev["macro_f1"]
    untrained = _untrained_test_f1(cfg)
    assert f1 > 0.30, f"test macro-F1 {f1:.3f} is not clearly above chance (1/6)"
    assert f1 > untrained + 0.10, f"test macro-F1 {f1:.3f} vs untrained {untrained:.3f}"
    # What the run leaves behind for people and for the sweep tables.
    out = tmp_path / "run"
    for name in ("result.json", "history.csv", "history.json", "server_metrics.json", "f1_per_round.png",
                 "final_model.safetensors"):
        assert (out / name).stat().st_size > 0, name
    server = json.loads((out / "server_metrics.json").read_text())
    assert [m["round"] for m in server] == list(range(1, 6))
    assert server[-1]["evaluations"]["test"]["macro_f1"] == pytest.approx(result.history[-1]["test_macro_f1"])


def test_seeded_run_is_reproducible_and_http_matches_in_process(tmp_path: Path) -> None:
    cfg = _config(algorithm="mfcpl", rounds=3, seed=7, missing_rate=0.5, missing_mode="sample", eval_every=1,
                  training={"local_epochs": 1})
    first = run_experiment(cfg, tmp_path / "a", workers=2, progress=lambda _: None)
    second = run_experiment(cfg, tmp_path / "b", workers=1, progress=lambda _: None)
    local = run_experiment_inprocess(cfg, tmp_path / "c", workers=2, progress=lambda _: None)

    def scores(result: object) -> list[tuple[float, float]]:
        return [(e["dev_macro_f1"], e["test_loss"]) for e in result.history]  # type: ignore[attr-defined]

    assert scores(first) == scores(second)
    assert scores(first) == scores(local)
    models = [(tmp_path / d / "final_model.safetensors").read_bytes() for d in "abc"]
    assert models[0] == models[1] == models[2]
    # Both transports record the same sample-weighted training metrics; in-process also the prototype state.
    for over_http, in_process in zip(first.history, local.history, strict=True):
        assert over_http["train_loss"] == pytest.approx(in_process["train_loss"], rel=1e-6)
        assert over_http["train_ce"] > 0
    last = local.history[-1]
    assert 1 <= last["prototype_classes_shared"] <= 6 and -1 <= last["prototype_cosine_shared"] <= 1
    # A different seed is a different run.
    other = run_experiment_inprocess(cfg.model_copy(update={"seed": 8}), tmp_path / "d", workers=1,
                                     progress=lambda _: None)
    assert scores(other) != scores(local)


def test_sweep_resumes_and_writes_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    args = ["--methods", "fedavg,fedprox", "--rates", "0.8", "--modes", "client", "--seeds", "1",
            "--subjects", "1,3", "--alpha", "5", "--clients-per-round", "3", "--rounds", "2", "--eval-every", "1",
            "--set", "model.hidden_dim=16", "--set", "model.attention_dim=16", "--data-dir", DATA_DIR,
            "--results-dir", str(results), "--runs-dir", str(tmp_path / "runs"), "--parallel", "2",
            "--in-process", "--table", str(tmp_path / "table.md")]
    assert sweep_main(args) == 0
    files = sorted(results.glob("*.json"))
    assert len(files) == 2
    table = (tmp_path / "table.md").read_text()
    assert "| client | 0.8 | fedavg |" in table and "| client | 0.8 | fedprox |" in table
    before = [f.stat().st_mtime_ns for f in files]
    capsys.readouterr()
    assert sweep_main(args) == 0  # everything done: nothing runs again
    assert "2 already done, 0 to run" in capsys.readouterr().out
    assert [f.stat().st_mtime_ns for f in files] == before
    # --match selects runs by id; --curves plots any recorded per-round field.
    curves = tmp_path / "train_loss.png"
    assert sweep_main(["--table-only", "--all", "--match", "*fedprox*", "--results-dir", str(results),
                       "--curves", str(curves), "--curve-metric", "train_loss"]) == 0
    table = capsys.readouterr().out
    assert "| fedprox |" in table and "| fedavg |" not in table
    assert curves.stat().st_size > 0


def test_simulate_cli_prints_a_results_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = simulate_main(["--algorithm", "fedavg", "--subjects", "1", "--alpha", "5", "--clients-per-round", "2",
                          "--rounds", "1", "--set", "model.hidden_dim=16", "--data-dir", DATA_DIR,
                          "--out", str(tmp_path / "o"), "--workers", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "test macro-F1 at best dev" in out and "transport" in out
    history = json.loads((tmp_path / "o" / "history.json").read_text())
    assert history[0]["participants"] == 2 and np.isfinite(history[0]["test_macro_f1"])
