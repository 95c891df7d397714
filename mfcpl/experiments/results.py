"""A finished run's result: the history, the test score at the best dev round, a smoothed score; tables."""

from __future__ import annotations

import csv
import json
import logging
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from mfcpl.experiments.config import ExperimentConfig

log = logging.getLogger("mfcpl.experiments")

SMOOTH_LAST = 10


class RunResult(BaseModel):
    run_id: str
    config: ExperimentConfig
    transport: str
    device: str = "cpu"
    federation_id: str | None = None
    trainable_clients: int
    missing: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(
        default_factory=dict, description="The data set as loaded: its partition (scheme, clients, seed, dev cut) and "
        "the normalization mode applied.")
    best_dev_round: int | None
    best_dev_macro_f1: float | None
    test_at_best_dev: dict[str, float]
    smoothed_test_macro_f1: float | None = Field(
        description=f"Mean test macro-F1 over the last {SMOOTH_LAST} evaluations."
    )
    final_test: dict[str, float]
    wall_time_s: float
    partial: bool = Field(False, description="The run was cut off before its last round (history so far).")
    timing: dict[str, float] = Field(default_factory=dict)
    history: list[dict[str, Any]]

    def write(self, out: Path, server_history: list[dict[str, Any]] | None = None) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(self.model_dump_json(indent=1))
        (out / "history.json").write_text(json.dumps(self.history, indent=1))
        if server_history is not None:
            (out / "server_metrics.json").write_text(json.dumps(server_history, indent=1))
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        with open(out / "history.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        try:
            from mfcpl.experiments.plots import plot_history

            plot_history(self.history, out / "f1_per_round.png", title=self.run_id)
        except ImportError as error:  # matplotlib (the `plots` extra) is optional for headless nodes
            log.warning("no f1_per_round.png: %s", error)


def summarize_history(cfg: ExperimentConfig, history: list[dict[str, Any]], *, wall_time_s: float, transport: str,
                      missing: dict[str, Any], trainable_clients: int, federation_id: str | None = None,
                      device: str = "cpu", data: dict[str, Any] | None = None) -> RunResult:
    evaluated = [e for e in history if "dev_macro_f1" in e]
    best = max(evaluated, key=lambda e: e["dev_macro_f1"]) if evaluated else None  # first best on ties
    last = evaluated[-SMOOTH_LAST:]
    timing = {
        "client_train_seconds": sum(e.get("client_train_seconds", 0.0) for e in history),
        "client_download_seconds": sum(e.get("client_download_seconds", 0.0) for e in history),
        "client_upload_seconds": sum(e.get("client_upload_seconds", 0.0) for e in history),
        "eval_seconds": sum(e.get("eval_seconds", 0.0) for e in history),
        "round_seconds": sum(e.get("round_seconds", 0.0) for e in history),
    }
    return RunResult(
        run_id=cfg.run_id(),
        config=cfg,
        transport=transport,
        device=device,
        federation_id=federation_id,
        trainable_clients=trainable_clients,
        missing=missing,
        data=data or {},
        best_dev_round=best["round"] if best else None,
        best_dev_macro_f1=best["dev_macro_f1"] if best else None,
        test_at_best_dev={k[5:]: v for k, v in best.items() if k.startswith("test_")} if best else {},
        smoothed_test_macro_f1=statistics.fmean(e["test_macro_f1"] for e in last) if last else None,
        final_test={k[5:]: v for k, v in evaluated[-1].items() if k.startswith("test_")} if evaluated else {},
        wall_time_s=wall_time_s,
        timing=timing,
        history=history,
    )


def load_results(paths: Iterable[Path]) -> list[RunResult]:
    return [RunResult.model_validate_json(p.read_text()) for p in sorted(paths)]


def rounds_reached(result: RunResult) -> int:
    return max((e["round"] for e in result.history), default=0)


def truncated(result: RunResult, max_round: int) -> RunResult:
    """The result as if the run had stopped after ``max_round`` (to compare runs at equal rounds)."""
    history = [e for e in result.history if e["round"] <= max_round]
    out = summarize_history(result.config, history, wall_time_s=result.wall_time_s, transport=result.transport,
                            missing=result.missing, trainable_clients=result.trainable_clients,
                            federation_id=result.federation_id, device=result.device)
    out.partial = result.partial or rounds_reached(result) > max_round
    return out


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def results_table(results: Sequence[RunResult], group_keys: Sequence[str] = ("missing_mode", "missing_rate"),
                  ) -> str:
    """Markdown: one row per (group, method), test macro-F1 at the best dev round and smoothed, mean ± std."""
    groups: dict[tuple[Any, ...], list[RunResult]] = {}
    for r in results:
        c = r.config
        mode = c.missing_mode if c.missing_rate > 0 else "none"
        key = tuple(mode if k == "missing_mode" else getattr(c, k) for k in group_keys)
        key += (str(c.algorithm), c.tag)
        groups.setdefault(key, []).append(r)
    header = [*group_keys, "method", "variant", "rounds", "seeds", "test F1 @ best dev", "smoothed test F1",
              "best dev F1"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        runs = groups[key]
        at_best = [r.test_at_best_dev["macro_f1"] for r in runs if "macro_f1" in r.test_at_best_dev]
        smooth = [r.smoothed_test_macro_f1 for r in runs if r.smoothed_test_macro_f1 is not None]
        dev = [r.best_dev_macro_f1 for r in runs if r.best_dev_macro_f1 is not None]
        seeds = ",".join(str(r.config.seed) for r in sorted(runs, key=lambda r: r.config.seed))
        reached = sorted({rounds_reached(r) for r in runs})
        rounds = "-".join(str(x) for x in (reached[0], reached[-1]) if x) if len(reached) > 1 else str(reached[0])
        if any(r.partial for r in runs):
            rounds += f" of {runs[0].config.rounds}"
        cells = [str(x) for x in key] + [rounds, seeds, _mean_std(at_best), _mean_std(smooth), _mean_std(dev)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
