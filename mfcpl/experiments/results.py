"""A finished run's result: the history, the test score at the best dev round, a smoothed score; tables.

Also the statistics of a table against a reference method (:func:`paired_gain`), the compact form of a result
file (:func:`compact_result_dict`, :func:`compact_result_text`) and the check that a recorded run's settings are
still what its configuration resolves to (:func:`settings_changes`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import statistics
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TypeVar

from pydantic import BaseModel, Field

from mfcpl.experiments.config import ExperimentConfig

log = logging.getLogger("mfcpl.experiments")

SMOOTH_LAST = 10
COMPACT_DIGITS = 6  # significant digits of every float in a compact result file


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
    settings: dict[str, Any] | None = Field(
        None, description="The effective settings the run trained with: {'training': TrainingConfig, 'model': "
        "ModelSettings} as JSON, defaults included (absent in results written before it was recorded).")
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


def effective_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """What ``cfg`` resolves to today: every TrainingConfig and ModelSettings field, defaults included."""
    return {"training": cfg.training_config().model_dump(mode="json"),
            "model": cfg.model_settings().model_dump(mode="json")}


def summarize_history(cfg: ExperimentConfig, history: list[dict[str, Any]], *, wall_time_s: float, transport: str,
                      missing: dict[str, Any], trainable_clients: int, federation_id: str | None = None,
                      device: str = "cpu", data: dict[str, Any] | None = None,
                      record_settings: bool = False) -> RunResult:
    """The result of a run's history; ``record_settings``: keep :func:`effective_settings` (a run that has just
    trained with them; not a result rebuilt later, whose defaults may have changed since)."""
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
        settings=effective_settings(cfg) if record_settings else None,
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
    out.settings = result.settings
    return out


# ---------------------------------------------------------------------------------------------------------
# Paired statistics against a reference method

# The 0.975 quantile of Student's t with df = 1..30 degrees of freedom (two-sided 95 %); beyond 30, 1.96 (the
# normal quantile; at df 31 the exact value is 2.04, so intervals over more than 31 seeds are slightly narrow).
T_QUANTILE_975: dict[int, float] = {
    1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 6: 2.446912, 7: 2.364624, 8: 2.306004,
    9: 2.262157, 10: 2.228139, 11: 2.200985, 12: 2.178813, 13: 2.160369, 14: 2.144787, 15: 2.131450,
    16: 2.119905, 17: 2.109816, 18: 2.100922, 19: 2.093024, 20: 2.085963, 21: 2.079614, 22: 2.073873,
    23: 2.068658, 24: 2.063899, 25: 2.059539, 26: 2.055529, 27: 2.051831, 28: 2.048407, 29: 2.045230,
    30: 2.042272,
}


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (:data:`T_QUANTILE_975`; 1.96 beyond 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T_QUANTILE_975.get(df, 1.96)


@dataclass(frozen=True)
class PairedGain:
    """The mean of per-seed differences (a - b) over ``n`` seeds and its two-sided 95 % Student-t interval
    [``low``, ``high``] (n - 1 degrees of freedom); no interval (None) for n = 1."""

    mean: float
    low: float | None
    high: float | None
    n: int

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """``+1.2 [-0.8, +3.2] (n=5)``: F1 fractions shown in points (``scale`` 100); ``+1.2 (n=1)``."""
        mean = f"{scale * self.mean:+.{digits}f}"
        if self.low is None or self.high is None:
            return f"{mean} (n={self.n})"
        return f"{mean} [{scale * self.low:+.{digits}f}, {scale * self.high:+.{digits}f}] (n={self.n})"


K = TypeVar("K", bound=Hashable)


def paired_gain(values_a: Mapping[K, float], values_b: Mapping[K, float]) -> PairedGain | None:
    """a's gain over b on the seeds (keys) both have: the mean difference and its 95 % t interval; seeds that
    only one side has are ignored; None when no seed is shared."""
    differences = [values_a[k] - values_b[k] for k in values_a if k in values_b]
    n = len(differences)
    if n == 0:
        return None
    mean = statistics.fmean(differences)
    if n == 1:
        return PairedGain(mean, None, None, 1)
    half = t_quantile_975(n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return PairedGain(mean, mean - half, mean + half, n)


def parse_reference(text: str) -> tuple[str, str]:
    """``METHOD[:TAG]`` -> (method, tag); no tag: the untagged runs (tag "")."""
    method, _, tag = text.partition(":")
    return method.strip(), tag.strip()


def at_best_dev_f1(result: RunResult) -> float | None:
    return result.test_at_best_dev.get("macro_f1")


def smoothed_f1(result: RunResult) -> float | None:
    return result.smoothed_test_macro_f1


def values_by_seed(runs: Iterable[RunResult], value: Callable[[RunResult], float | None],
                   ) -> dict[tuple[int, int], float]:
    """``{(seed, rounds reached): value}`` of the runs that have the value, the key that pairs runs of two methods;
    a key that two of the runs share (ambiguous: a pair could not be chosen) is left out."""
    out: dict[tuple[int, int], float] = {}
    seen: set[tuple[int, int]] = set()
    ambiguous: set[tuple[int, int]] = set()
    for r in runs:
        key = (r.config.seed, rounds_reached(r))
        if key in seen:
            ambiguous.add(key)
        seen.add(key)
        v = value(r)
        if v is not None:
            out[key] = v
    return {k: v for k, v in out.items() if k not in ambiguous}


# ---------------------------------------------------------------------------------------------------------
# Tables


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def _variant_label(method: str, tag: str) -> str:
    return f"{method}:{tag}" if tag else method


def results_table(results: Sequence[RunResult], group_keys: Sequence[str] = ("missing_mode", "missing_rate"),
                  reference: str | tuple[str, str] | None = None, per_seed: bool = False) -> str:
    """Markdown: one row per (group, method, variant), test macro-F1 at the best dev round and smoothed, mean ± std.

    ``reference`` (``METHOD[:TAG]`` or (method, tag)): two more columns, each row's paired gain over the
    reference's row of its group (:func:`paired_gain` over the seeds both have at the same rounds reached), in F1
    points with the 95 % t interval. ``per_seed``: a column of the test F1 at the best dev round per run, in the
    order of the seeds column.
    """
    groups: dict[tuple[Any, ...], list[RunResult]] = {}
    for r in results:
        c = r.config
        mode = c.missing_mode if c.missing_rate > 0 else "none"
        key = tuple(mode if k == "missing_mode" else getattr(c, k) for k in group_keys)
        key += (str(c.algorithm), c.tag)
        groups.setdefault(key, []).append(r)
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    header = [*group_keys, "method", "variant", "rounds", "seeds", "test F1 @ best dev", "smoothed test F1",
              "best dev F1"]
    if ref is not None:
        label = _variant_label(*ref)
        header += [f"Δ test F1 @ best dev vs {label}", f"Δ smoothed test F1 vs {label}"]
    if per_seed:
        header.append("per-seed test F1 @ best dev")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        runs = sorted(groups[key], key=lambda r: (r.config.seed, rounds_reached(r)))
        at_best = [v for r in runs if (v := at_best_dev_f1(r)) is not None]
        smooth = [v for r in runs if (v := smoothed_f1(r)) is not None]
        dev = [r.best_dev_macro_f1 for r in runs if r.best_dev_macro_f1 is not None]
        seeds = ",".join(str(r.config.seed) for r in runs)
        reached = sorted({rounds_reached(r) for r in runs})
        rounds = "-".join(str(x) for x in (reached[0], reached[-1]) if x) if len(reached) > 1 else str(reached[0])
        if any(r.partial for r in runs):
            rounds += f" of {runs[0].config.rounds}"
        cells = [str(x) for x in key] + [rounds, seeds, _mean_std(at_best), _mean_std(smooth), _mean_std(dev)]
        if ref is not None:
            ref_key = (*key[:-2], *ref)
            if key == ref_key:
                cells += ["reference", "reference"]
            else:
                for value in (at_best_dev_f1, smoothed_f1):
                    gain = (paired_gain(values_by_seed(runs, value), values_by_seed(groups[ref_key], value))
                            if ref_key in groups else None)
                    cells.append(gain.format() if gain is not None else "-")
        if per_seed:
            cells.append(", ".join("-" if (v := at_best_dev_f1(r)) is None else f"{100 * v:.1f}"
                                   for r in runs))
        lines.append("| " + " | ".join(cells) + " |")
    if ref is not None:
        lines += ["", f"Δ: mean of the per-seed differences to {_variant_label(*ref)} in its group, over the seeds "
                  "both have at the same rounds reached, in F1 points, [two-sided 95 % Student-t interval] (n seeds); "
                  "- : no seed in common."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Compact result files and recorded settings

_EXACT_KEYS = ("config", "settings")  # kept to the bit: the run id hashes the config; settings are compared


def _is_absolute(path: str) -> bool:
    return PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute()


def round_floats(value: Any, digits: int = COMPACT_DIGITS) -> Any:
    """``value`` with every float (in dicts and lists, recursively) rounded to ``digits`` significant digits."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [round_floats(v, digits) for v in value]
    return value


def compact_result_dict(d: dict[str, Any]) -> dict[str, Any]:
    """A result (RunResult as JSON) for a results folder: every float rounded to 6 significant digits, history
    included, and ``config.data_dir`` set to null when it is an absolute path (machine-specific; the run id does
    not hash it). ``config`` and ``settings`` keep their values exactly (the run id hashes the configuration, and
    settings are compared with what the configuration resolves to). Idempotent."""
    out = {k: (json.loads(json.dumps(v)) if k in _EXACT_KEYS else round_floats(v)) for k, v in d.items()}
    config = out.get("config")
    if isinstance(config, dict) and isinstance(config.get("data_dir"), str) and _is_absolute(config["data_dir"]):
        config["data_dir"] = None
    return out


def compact_result_text(d: dict[str, Any]) -> str:
    """:func:`compact_result_dict` as JSON text: indented like ``RunResult.write`` but one line per history entry."""
    data = compact_result_dict(d)
    parts = [f" {json.dumps(k)}: " + json.dumps(v, indent=1).replace("\n", "\n ")
             for k, v in data.items() if k != "history"]
    if "history" in data:
        rows = ",\n".join("  " + json.dumps(e, separators=(",", ":")) for e in data["history"])
        parts.append(' "history": [\n' + rows + "\n ]" if rows else ' "history": []')
    return "{\n" + ",\n".join(parts) + "\n}\n"


def write_compact_result(d: dict[str, Any], path: Path) -> int:
    """Write :func:`compact_result_text` to ``path`` atomically (readers never see half a file); its size."""
    text = compact_result_text(d)
    RunResult.model_validate_json(text)  # refuse to write what would not load
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return len(text.encode())


class _Absent:
    def __repr__(self) -> str:
        return "absent"


ABSENT: Any = _Absent()


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (recorded, current)}`` where two settings records differ (:data:`ABSENT` for a key one of
    them lacks); empty when they agree."""
    a, b = _flatten(recorded), _flatten(current)
    keys = list(a) + [k for k in b if k not in a]
    return {k: (a.get(k, ABSENT), b.get(k, ABSENT)) for k in keys if a.get(k, ABSENT) != b.get(k, ABSENT)}


def stale_settings(path: Path, cfg: ExperimentConfig) -> dict[str, tuple[Any, Any]] | None:
    """How the settings recorded in the result file ``path`` differ from what ``cfg`` resolves to today (empty:
    not stale); None when the file records none (written before settings were recorded) or cannot be read."""
    try:
        recorded = json.loads(path.read_text()).get("settings")
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict):
        return None
    try:
        current = effective_settings(cfg)
    except ValueError:  # the configuration no longer validates: running it fails and says why
        return None
    return settings_changes(recorded, current)
