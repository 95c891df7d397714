"""`mfcpl sweep` tables against a reference (paired gains with t intervals, per-seed values), curves with spread
bands, compact result files, and stale settings. Synthetic results only: nothing trains here."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mfcpl.experiments import cli
from mfcpl.experiments.config import ExperimentConfig
from mfcpl.experiments.results import (
    ABSENT,
    T_QUANTILE_975,
    RunResult,
    at_best_dev_f1,
    compact_result_dict,
    compact_result_text,
    effective_settings,
    load_results,
    paired_gain,
    results_table,
    settings_changes,
    summarize_history,
    t_quantile_975,
    truncated,
    values_by_seed,
)

REPO = Path(__file__).resolve().parents[2]


def _result(method: str, seed: int, test: float, *, tag: str = "", earlier: float = 0.5, reached: int = 2,
            mode: str = "client", rate: float = 0.8, rounds: int = 2, data_dir: str | None = None) -> RunResult:
    """Two evaluated rounds: round 1 (dev 0.5, test ``earlier``) and round 2 (dev 0.6, test ``test``), so the test
    F1 at the best dev round is ``test`` and the smoothed one (earlier + test) / 2; ``reached=1``: cut off after
    round 1 (then both are ``earlier``)."""
    cfg = ExperimentConfig.model_validate({"algorithm": method, "seed": seed, "tag": tag, "missing_mode": mode,
                                           "missing_rate": rate, "rounds": rounds, "data_dir": data_dir})
    history = [{"round": 1, "dev_macro_f1": 0.5, "test_macro_f1": earlier, "train_loss": 1.0 / 3},
               {"round": 2, "dev_macro_f1": 0.6, "test_macro_f1": test, "train_loss": 2.0 / 7}][:reached]
    result = summarize_history(cfg, history, wall_time_s=12.345678901, transport="inprocess", missing={"q": rate},
                               trainable_clients=3)
    result.partial = reached < rounds
    return result


def _write(results: list[RunResult], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for r in results:
        (folder / f"{r.run_id}.json").write_text(r.model_dump_json(indent=1))
    return folder


def _rows(table: str) -> dict[tuple[str, ...], list[str]]:
    """Table rows by (mode, rate, method, variant) -> the cells after them."""
    rows: dict[tuple[str, ...], list[str]] = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("| "):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[tuple(cells[:4])] = cells[4:]
    return rows


# Hand-computed (F1 fractions): fedavg - fedproto per seed is +0.02, +0.01, +0.03 at the best dev round (mean 0.02,
# sd 0.01, t(2) = 4.302653: half width 0.0248); smoothed, with round 1 at 0.5 everywhere, half of that.
FEDPROTO = {1: 0.70, 2: 0.72, 3: 0.74}
FEDAVG = {1: 0.72, 2: 0.73, 3: 0.77}
PEN = {1: 0.75, 2: 0.71}  # and seed 3 cut off after round 1: no pair for it


def _grid() -> list[RunResult]:
    return ([_result("fedproto", s, v) for s, v in FEDPROTO.items()]
            + [_result("fedavg", s, v) for s, v in FEDAVG.items()]
            + [_result("mfcpl", s, v, tag="pen") for s, v in PEN.items()]
            + [_result("mfcpl", 3, 0.9, tag="pen", reached=1, earlier=0.6)]
            + [_result("fedavg", 1, 0.6, mode="sample")])  # a group without the reference


def test_t_quantiles() -> None:
    assert t_quantile_975(4) == pytest.approx(2.776, abs=5e-4)
    assert t_quantile_975(1) == pytest.approx(12.706, abs=5e-4)
    assert t_quantile_975(2) == pytest.approx(4.303, abs=5e-4)
    assert t_quantile_975(30) == pytest.approx(2.042, abs=5e-4)
    assert t_quantile_975(31) == t_quantile_975(500) == 1.96
    assert sorted(T_QUANTILE_975) == list(range(1, 31))
    assert all(T_QUANTILE_975[df] > T_QUANTILE_975[df + 1] > 1.96 for df in range(1, 30))
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_paired_gain_hand_computed() -> None:
    a = {1: 0.80, 2: 0.75, 3: 0.70, 4: 0.72, 5: 0.78}
    b = {1: 0.78, 2: 0.74, 3: 0.71, 4: 0.70, 5: 0.75}
    gain = paired_gain(a, b)
    assert gain is not None
    # differences 0.02, 0.01, -0.01, 0.02, 0.03: mean 0.014, sd sqrt(0.00092 / 4), t(4) = 2.776445
    half = 2.776445 * math.sqrt(0.00092 / 4) / math.sqrt(5)
    assert gain.n == 5
    assert gain.mean == pytest.approx(0.014)
    assert gain.low == pytest.approx(0.014 - half, abs=1e-6) and gain.high == pytest.approx(0.014 + half, abs=1e-6)
    assert gain.format() == "+1.4 [-0.5, +3.3] (n=5)"
    # seeds only one side has are ignored
    assert paired_gain({**a, 6: 0.99}, {**b, 7: 0.01}) == gain
    # one seed: the difference, no interval; none: None
    one = paired_gain({1: 0.80, 9: 0.5}, {1: 0.75, 2: 0.1})
    assert one is not None and one.n == 1 and one.low is None and one.high is None
    assert one.mean == pytest.approx(0.05) and one.format() == "+5.0 (n=1)"
    assert paired_gain({1: 0.8}, {2: 0.7}) is None
    # a's loss is negative; identical differences give a zero-width interval
    same = paired_gain({1: 0.5, 2: 0.6}, {1: 0.6, 2: 0.7})
    assert same is not None and same.format() == "-10.0 [-10.0, -10.0] (n=2)"


def test_values_by_seed_pair_on_seed_and_rounds_reached() -> None:
    runs = [_result("mfcpl", 1, 0.7), _result("mfcpl", 2, 0.8, reached=1, earlier=0.4),
            _result("mfcpl", 3, 0.6), _result("mfcpl", 3, 0.65, rounds=3)]  # seed 3 twice at 2 rounds: ambiguous
    assert values_by_seed(runs, at_best_dev_f1) == {(1, 2): 0.7, (2, 1): 0.4}


def test_table_reference_and_per_seed_columns(tmp_path: Path) -> None:
    results = load_results(_write(_grid(), tmp_path / "runs").glob("*.json"))
    table = results_table(results, reference="fedproto", per_seed=True)
    header = table.splitlines()[0]
    assert "Δ test F1 @ best dev vs fedproto" in header and "Δ smoothed test F1 vs fedproto" in header
    assert header.endswith("| per-seed test F1 @ best dev |")
    rows = _rows(table)
    # rounds, seeds, test F1 @ best dev, smoothed, best dev, Δ at best dev, Δ smoothed, per seed
    assert rows[("client", "0.8", "fedproto", "")][5:] == ["reference", "reference", "70.0, 72.0, 74.0"]
    assert rows[("client", "0.8", "fedavg", "")][5:] == [
        "+2.0 [-0.5, +4.5] (n=3)", "+1.0 [-0.2, +2.2] (n=3)", "72.0, 73.0, 77.0"]
    # seeds 1 and 2 pair (t(1) = 12.706: differences +0.05, -0.01); seed 3 stopped at round 1 does not
    assert rows[("client", "0.8", "mfcpl", "pen")] == [
        "1-2 of 2", "1,2,3", "68.7 ± 7.8", "61.0 ± 1.3", "56.7 ± 5.8", "+2.0 [-36.1, +40.1] (n=2)",
        "+1.0 [-18.1, +20.1] (n=2)", "75.0, 71.0, 60.0"]
    assert rows[("sample", "0.8", "fedavg", "")][5:] == ["-", "-", "60.0"]
    assert "Δ: mean of the per-seed differences to fedproto" in table
    # without the options, the table is the one it always was
    plain = results_table(results)
    assert "Δ" not in plain and "per-seed" not in plain
    assert _rows(plain)[("client", "0.8", "fedavg", "")] == ["2", "1,2,3", "74.0 ± 2.6", "62.0 ± 1.3", "60.0 ± 0.0"]


def test_reference_with_a_tag(tmp_path: Path) -> None:
    results = load_results(_write(_grid(), tmp_path / "runs").glob("*.json"))
    rows = _rows(results_table(results, reference=("mfcpl", "pen")))
    assert rows[("client", "0.8", "mfcpl", "pen")][5:] == ["reference", "reference"]
    assert rows[("client", "0.8", "fedproto", "")][5] == "-2.0 [-40.1, +36.1] (n=2)"


def _mfcpl(*args: str) -> subprocess.CompletedProcess[str]:
    """The `mfcpl` command itself (mfcpl.cli.main, as the console script runs it)."""
    return subprocess.run([sys.executable, "-c", "from mfcpl.cli import main; raise SystemExit(main())", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_cli_table_only_with_reference_and_per_seed(tmp_path: Path) -> None:
    folder = _write(_grid(), tmp_path / "runs")
    done = _mfcpl("sweep", "--table-only", "--all", "--results-dir", str(folder), "--match", "*client*",
                  "--reference", "fedproto", "--per-seed", "--table", str(tmp_path / "t.md"))
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stdout)
    assert rows[("client", "0.8", "fedavg", "")][5:] == [
        "+2.0 [-0.5, +4.5] (n=3)", "+1.0 [-0.2, +2.2] (n=3)", "72.0, 73.0, 77.0"]
    assert ("sample", "0.8", "fedavg", "") not in rows
    assert (tmp_path / "t.md").read_text() in done.stdout
    tagged = _mfcpl("sweep", "--table-only", "--all", "--results-dir", str(folder), "--reference", "mfcpl:pen")
    assert tagged.returncode == 0 and _rows(tagged.stdout)[("client", "0.8", "mfcpl", "pen")][5] == "reference"
    absent = _mfcpl("sweep", "--table-only", "--all", "--results-dir", str(folder), "--reference", "fedprox")
    assert absent.returncode == 0 and "no tabulated run is the reference fedprox" in absent.stderr
    wrong = _mfcpl("sweep", "--table-only", "--all", "--results-dir", str(folder), "--reference", "nosuch:x")
    assert wrong.returncode == 2 and "'nosuch' is not a method" in wrong.stderr


def test_curves_have_a_band_where_two_seeds_have_the_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mfcpl.experiments.plots as plots

    seen: dict[str, Any] = {}
    real = plots.plot_curves

    def spy(curves: Any, path: Path, title: str = "", **kwargs: Any) -> Path:
        seen.update(curves=curves, title=title, **kwargs)
        return real(curves, path, title, **kwargs)

    monkeypatch.setattr(plots, "plot_curves", spy)
    runs = [_result("fedavg", 1, 0.7), _result("fedavg", 2, 0.8, reached=1, earlier=0.4),
            _result("mfcpl", 1, 0.6, tag="pen")]
    cli._curves_plot(runs, tmp_path / "c.png", "test_macro_f1")
    assert (tmp_path / "c.png").stat().st_size > 0
    assert seen["curves"] == {"fedavg (n=2)": [(1, pytest.approx(0.45)), (2, 0.7)], "mfcpl-pen (n=1)": [(1, 0.5),
                                                                                                     (2, 0.6)]}
    assert seen["bands"] == {"fedavg (n=2)": [pytest.approx(math.sqrt(0.005)), None], "mfcpl-pen (n=1)": [None, None]}
    assert "± 1 std" in seen["title"] and seen["ylabel"] == "test macro-F1 (%)"


def _floats(value: Any) -> Iterator[float]:
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _floats(v)
    elif isinstance(value, list):
        for v in value:
            yield from _floats(v)


def _ugly(r: RunResult, k: int) -> RunResult:
    """A result whose every score has the many digits a real one has."""
    data = json.loads(r.model_dump_json())
    for e in data["history"]:
        e["dev_macro_f1"] += 1e-9 * (k + 1) / 7
        e["test_macro_f1"] += 1e-9 * (k + 2) / 3
    cfg = ExperimentConfig.model_validate({**data["config"], "data_dir": "/abs/data" if k % 2 else "../shared/data",
                                           "training": {"lr": 0.0123456789}})
    out = summarize_history(cfg, data["history"], wall_time_s=1 / 3, transport="inprocess", missing={},
                            trainable_clients=3, record_settings=True)
    out.partial = r.partial
    return out


def test_compaction_round_trip_keeps_every_table_number(tmp_path: Path) -> None:
    originals = _write([_ugly(r, k) for k, r in enumerate(_grid())], tmp_path / "orig")
    copies = tmp_path / "compact"
    shutil.copytree(originals, copies)
    before = {p.name: p.stat().st_size for p in copies.glob("*.json")}
    done = subprocess.run([sys.executable, "scripts/compact_results.py", str(copies)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    for name, size in before.items():
        line = next(x for x in done.stdout.splitlines() if x.startswith(str(copies / name)))
        after = (copies / name).stat().st_size
        assert f": {size} -> {after} bytes (written)" in line and after < size
    assert done.stdout.splitlines()[-1].startswith(f"total: {sum(before.values())} -> ")
    # the tables, plain, against a reference, per seed and at an earlier round, are the same
    a, b = load_results(originals.glob("*.json")), load_results(copies.glob("*.json"))
    variants: list[dict[str, Any]] = [{}, {"reference": "fedproto", "per_seed": True}, {"reference": ("mfcpl", "pen")}]
    for options in variants:
        assert results_table(b, **options) == results_table(a, **options)
        assert (results_table([truncated(r, 1) for r in b], **options)
                == results_table([truncated(r, 1) for r in a], **options))
    for ra, rb in zip(a, b, strict=True):
        assert rb.run_id == ra.run_id == rb.config.run_id()  # the file names the sweep finds done hold
        assert rb.settings == ra.settings and rb.config.training == {"lr": 0.0123456789}
        assert rb.config.data_dir == (None if ra.config.data_dir == "/abs/data" else "../shared/data")
        data = json.loads((copies / f"{rb.run_id}.json").read_text())
        rounded = [x for key, v in data.items() if key not in ("config", "settings") for x in _floats(v)]
        assert rounded and all(x == float(f"{x:.6g}") for x in rounded)
        assert data["wall_time_s"] == 0.333333 and data["history"][0]["train_loss"] == 0.333333
    # idempotent: a second pass writes nothing
    texts = {p: p.read_text() for p in copies.glob("*.json")}
    again = subprocess.run([sys.executable, "scripts/compact_results.py", str(copies)], capture_output=True,
                           text=True, timeout=120, cwd=REPO)
    assert again.returncode == 0 and again.stdout.count("(unchanged)") == len(texts)
    assert {p: p.read_text() for p in copies.glob("*.json")} == texts
    for text in texts.values():
        assert compact_result_text(json.loads(text)) == text
        assert compact_result_dict(json.loads(text)) == json.loads(text)


def test_compaction_leaves_other_files_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.json").write_text('{"a": 0.123456789}')
    done = subprocess.run([sys.executable, "scripts/compact_results.py", str(tmp_path)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 1 and "notes.json: skipped, not a run result" in done.stderr
    assert (tmp_path / "notes.json").read_text() == '{"a": 0.123456789}'


def test_simulate_copies_a_compact_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _ugly(_result("fedavg", 1, 0.7), 1)
    run.write(tmp_path / "out")
    cli._copy_result(tmp_path / "out" / "result.json", tmp_path / "results" / f"{run.run_id}.json")
    copied = (tmp_path / "results" / f"{run.run_id}.json").read_text()
    assert copied == compact_result_text(json.loads(run.model_dump_json()))
    assert RunResult.model_validate_json(copied).config.data_dir is None
    # what is no run result still arrives, as it is, with a warning
    (tmp_path / "odd.json").write_text('{"run_id": "x"}')
    cli._copy_result(tmp_path / "odd.json", tmp_path / "results" / "odd.json")
    assert (tmp_path / "results" / "odd.json").read_text() == '{"run_id": "x"}'
    assert "odd.json copied uncompacted" in capsys.readouterr().err


def test_runs_record_their_effective_settings() -> None:
    cfg = ExperimentConfig(training={"lr": 0.01}, model={"hidden_dim": 16})
    result = summarize_history(cfg, [{"round": 1, "dev_macro_f1": 0.5, "test_macro_f1": 0.4}], wall_time_s=1.0,
                               transport="inprocess", missing={}, trainable_clients=1, record_settings=True)
    assert result.settings == effective_settings(cfg)
    assert result.settings["training"]["lr"] == 0.01 and result.settings["model"]["hidden_dim"] == 16
    assert len(result.settings["training"]) > 1  # the defaults too, not only the overrides
    assert truncated(result, 1).settings == result.settings
    assert RunResult.model_validate_json(result.model_dump_json()).settings == result.settings
    unrecorded = summarize_history(cfg, [], wall_time_s=1.0, transport="inprocess", missing={}, trainable_clients=1)
    assert unrecorded.settings is None


def test_settings_changes() -> None:
    recorded = {"training": {"lr": 0.05, "tau": 0.5}, "model": {"hidden_dim": 128}}
    assert settings_changes(recorded, json.loads(json.dumps(recorded))) == {}
    assert settings_changes(recorded, {"training": {"lr": 0.01}, "model": {"hidden_dim": 128, "new": True}}) == {
        "training.lr": (0.05, 0.01), "training.tau": (0.5, ABSENT), "model.new": (ABSENT, True)}


def test_stale_results_in_dry_run_and_as_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    grid = ["--methods", "fedavg", "--rates", "0.8", "--modes", "client", "--seeds", "1,2,3,4", "--rounds", "2",
            "--results-dir", str(results), "--runs-dir", str(tmp_path / "runs"), "--in-process"]
    args = cli.sweep_parser().parse_args(grid)
    configs = {s: cli.config_from_args(args, "fedavg", 0.8, "client", s) for s in (1, 2, 3, 4)}
    history = [{"round": 2, "dev_macro_f1": 0.5, "test_macro_f1": 0.4}]
    for seed in (1, 2, 3):  # seed 4 is still to run
        run = summarize_history(configs[seed], history, wall_time_s=1.0, transport="inprocess", missing={},
                                trainable_clients=1, record_settings=seed != 3)  # seed 3: an older result
        data = json.loads(run.model_dump_json())
        if seed == 2:  # recorded when the default learning rate was another, and a model setting did not exist
            data["settings"]["training"]["lr"] = 0.5
            del data["settings"]["model"]["hidden_dim"]
        (results / f"{run.run_id}.json").parent.mkdir(parents=True, exist_ok=True)
        (results / f"{run.run_id}.json").write_text(compact_result_text(data))
    lr = effective_settings(configs[2])["training"]["lr"]
    hidden = effective_settings(configs[2])["model"]["hidden_dim"]

    assert cli.sweep_main([*grid, "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sweep: 4 runs, 3 already done, 1 to run")
    assert out[1:] == [f"done  {configs[1].run_id()}",
                       f"stale {configs[2].run_id()}  (training.lr 0.5 -> {lr}, model.hidden_dim absent -> {hidden})",
                       f"done  {configs[3].run_id()}", f"todo  {configs[4].run_id()}"]

    (results / f"{configs[4].run_id()}.json").write_text(compact_result_text(json.loads(summarize_history(
        configs[4], history, wall_time_s=1.0, transport="inprocess", missing={}, trainable_clients=1,
        record_settings=True).model_dump_json())))
    assert cli.sweep_main(grid) == 0  # everything done: nothing runs, the stale one is skipped with a warning
    captured = capsys.readouterr()
    assert "4 already done, 0 to run" in captured.out and "| fedavg |" in captured.out
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert warnings == [f"sweep: warning: {configs[2].run_id()} is done with other settings than it resolves to "
                        f"today (training.lr 0.5 -> {lr}, model.hidden_dim absent -> {hidden}); skipped (remove its "
                        "file to run it again)"]
