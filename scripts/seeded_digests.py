"""Digests of seeded runs, to prove a refactor changed no behaviour: run it before and after, compare the lines.

For each algorithm, a short seeded federation (`mfcpl simulate --quick --rounds 3 --missing-rate 0.5`) runs
in-process, and two of them also over HTTP through an embedded coordinator; each line gives the sha256 (first 16
hex digits) of the final model and of the run's history without timings. Equal lines: bit-identical runs.

    python scripts/seeded_digests.py --data-dir ../shared/data --out /tmp/digests
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ALGORITHMS = ["mfcpl", "fedavg", "fedprox", "fedopt", "fedproto", "pmcmfl", "fednova"]
OVER_HTTP = ["mfcpl", "fedopt"]
TIMING_MARKERS = ("second", "time", "wall", "_s", "path", "dir", "at")


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not any(t in k for t in TIMING_MARKERS)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def digest(run: Path) -> str:
    model = hashlib.sha256((run / "final_model.safetensors").read_bytes()).hexdigest()[:16]
    history = json.loads((run / "history.json").read_text())
    text = json.dumps(_without_timings(history), sort_keys=True).encode()
    return f"model {model} history {hashlib.sha256(text).hexdigest()[:16]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder holding uci_har/")
    parser.add_argument("--out", required=True, type=Path, help="where the runs go")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    args = parser.parse_args()
    runs = [(a, True) for a in args.algorithms.split(",")] + [(a, False) for a in OVER_HTTP]
    for algorithm, in_process in runs:
        name = algorithm if in_process else f"http_{algorithm}"
        command = [sys.executable, "-m", "mfcpl", "simulate", "--quick", "--rounds", "3", "--missing-rate", "0.5",
                   "--algorithm", algorithm, "--data-dir", args.data_dir, "--out", str(args.out / name)]
        if in_process:
            command.append("--in-process")
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name} FAILED: {done.stderr[-500:]}", file=sys.stderr)
            return 1
        print(f"{name} {digest(args.out / name)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
