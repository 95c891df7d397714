"""Plots people would rather look at than tables: F1 per round, F1 per missing rate per method."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    import matplotlib
except ModuleNotFoundError as error:
    raise ModuleNotFoundError("plots need matplotlib, the `plots` extra: pip install 'mfcpl[plots]'",
                              name=error.name) from error

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_history(history: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Dev and test macro-F1 (percent) per evaluated round."""
    evaluated = [e for e in history if "dev_macro_f1" in e]
    fig, ax = plt.subplots(figsize=(7, 4))
    if evaluated:
        rounds = [e["round"] for e in evaluated]
        ax.plot(rounds, [100 * e["dev_macro_f1"] for e in evaluated], label="dev macro-F1")
        ax.plot(rounds, [100 * e["test_macro_f1"] for e in evaluated], label="test macro-F1")
        best = max(evaluated, key=lambda e: e["dev_macro_f1"])
        ax.axvline(best["round"], color="grey", linestyle=":", label=f"best dev (round {best['round']})")
    ax.set_xlabel("round")
    ax.set_ylabel("macro-F1 (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(curves: Mapping[str, Sequence[tuple[int, float]]], path: Path, title: str = "",
                ylabel: str = "dev macro-F1 (%)", percent: bool = True) -> Path:
    """Several runs' values per round on one plot (F1 as fractions, shown in percent unless ``percent=False``)."""
    scale = 100 if percent else 1
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in sorted(curves.items()):
        if points:
            ax.plot([p[0] for p in points], [scale * p[1] for p in points], label=label)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    if percent:
        ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_missing_rate(points: Mapping[str, Sequence[tuple[float, float, float]]], path: Path, title: str = "") -> Path:
    """Test macro-F1 per missing rate per method: ``points[method] = [(q, mean, std), ...]`` (fractions)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, rows in sorted(points.items()):
        rows = sorted(rows)
        ax.errorbar([r[0] for r in rows], [100 * r[1] for r in rows], yerr=[100 * r[2] for r in rows],
                    marker="o", capsize=3, label=method)
    ax.set_xlabel("missing rate q")
    ax.set_ylabel("test macro-F1 at best dev (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
