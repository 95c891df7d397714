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
                ylabel: str = "dev macro-F1 (%)", percent: bool = True,
                bands: Mapping[str, Sequence[float | None]] | None = None) -> Path:
    """Several runs' values per round on one plot (F1 as fractions, shown in percent unless ``percent=False``).

    ``bands[label][i]``: a spread (e.g. the standard deviation over seeds) at ``curves[label][i]``, drawn as a
    shaded band of ± that much around the line in the line's colour where it is not None; bands have no legend
    entry (say what they are in the title).
    """
    scale = 100 if percent else 1
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = ["-", "--", ":", "-."]
    alpha = 0.15 if sum(1 for p in curves.values() if p) <= 6 else 0.08  # many overlapping bands: fainter
    drawn = 0
    for label, points in sorted(curves.items()):
        if not points:
            continue
        x = [p[0] for p in points]
        y = [scale * p[1] for p in points]
        # past the 10 colours of the cycle, another line style keeps each line told apart
        (line,) = ax.plot(x, y, label=label, linewidth=1.2, linestyle=styles[drawn // 10 % len(styles)])
        drawn += 1
        spread = (bands or {}).get(label)
        if spread is not None and any(s is not None for s in spread):
            where = [s is not None for s in spread]
            low = [v - scale * s if s is not None else v for v, s in zip(y, spread, strict=True)]
            high = [v + scale * s if s is not None else v for v, s in zip(y, spread, strict=True)]
            ax.fill_between(x, low, high, where=where, color=line.get_color(), alpha=alpha, linewidth=0,
                            interpolate=False)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    if percent:
        ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    if drawn:
        if drawn > 8:  # many variants: the legend beside the plot, not over the curves
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 if drawn <= 24 else 2,
                      frameon=False)
        else:
            ax.legend(fontsize=7, loc="best", framealpha=0.8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
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
