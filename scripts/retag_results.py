"""Re-tag result files whose runs used settings that are no longer the defaults.

Run ids hash a run's *overrides*, so when a default changes, an old result with the same overrides would
pass for a run of the new default (and `mfcpl sweep` would skip it as done). This script writes the settings
such runs really used into their config, gives them a tag, and renames each file to its new run id, e.g.::

    python scripts/retag_results.py docs/results/runs --method mfcpl --tag-untagged norm \
        --set model.prototype_space=normalized --set training.cmpr_huber_delta=null

A ``--set`` is added only where the file does not already set that key; ``--tag-untagged`` only renames
untagged runs. ``--dry-run`` prints the renames without writing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mfcpl.experiments.config import ExperimentConfig


def _parse_set(items: list[str]) -> list[tuple[str, str, Any]]:
    out = []
    for item in items:
        key, _, raw = item.partition("=")
        section, _, field = key.partition(".")
        if section not in ("training", "model") or not field or not _:
            raise SystemExit(f"--set wants training.X=VALUE or model.X=VALUE, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare word such as normalized
        out.append((section, field, value))
    return out


def retag(path: Path, method: str | None, tag_untagged: str | None, sets: list[tuple[str, str, Any]],
          dry_run: bool) -> Path | None:
    data = json.loads(path.read_text())
    cfg = ExperimentConfig.model_validate(data["config"])
    if method is not None and str(cfg.algorithm) != method:
        return None
    training, model = dict(cfg.training), dict(cfg.model)
    for section, field, value in sets:
        target = training if section == "training" else model
        target.setdefault(field, value)
    tag = tag_untagged if (tag_untagged and not cfg.tag) else cfg.tag
    new = cfg.model_copy(update={"training": training, "model": model, "tag": tag})
    new_id = new.run_id()
    if new_id == data["run_id"] and new.model_dump(mode="json") == data["config"]:
        return None
    data["config"] = new.model_dump(mode="json")
    data["run_id"] = new_id
    dest = path.with_name(f"{new_id}.json")
    if dest != path and dest.exists():
        raise SystemExit(f"{dest} exists already: refusing to overwrite it with {path.name}")
    print(f"{path.name} -> {dest.name}")
    if not dry_run:
        dest.write_text(json.dumps(data, indent=1))
        if dest != path:
            path.unlink()
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--match", default="*.json", help="glob of the files to consider")
    parser.add_argument("--method", help="only runs of this algorithm")
    parser.add_argument("--tag-untagged", help="the tag an untagged run gets")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a setting the runs used, written where the file does not set it (JSON value)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    sets = _parse_set(args.set)
    changed = [p for p in sorted(args.results_dir.glob(args.match))
               if retag(p, args.method, args.tag_untagged, sets, args.dry_run)]
    print(f"{len(changed)} file(s) {'would be ' if args.dry_run else ''}re-tagged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
