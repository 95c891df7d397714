"""Rewrite run-result JSON files compactly, in place: the form `mfcpl sweep` and `mfcpl simulate --results-dir`
now write (mfcpl.experiments.results.compact_result_text): every float outside config and settings rounded to 6
significant digits (history included), an absolute config.data_dir dropped, one line per history entry.

Idempotent (a compact file is left as it is); each file is checked to load as a RunResult before it is replaced,
atomically, and a file that is no run result is left untouched (exit status 1). Prints the bytes before and after.

    python scripts/compact_results.py docs/results/runs
    python scripts/compact_results.py runs/a.json runs/b.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from mfcpl.experiments.results import RunResult, compact_result_text, write_compact_result


def _files(paths: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for item in paths:
        path = Path(item)
        out += sorted(path.glob("*.json")) if path.is_dir() else [path]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="DIR|FILE", help="folders (their *.json) or result files")
    parser.add_argument("--dry-run", action="store_true", help="print the sizes, write nothing")
    args = parser.parse_args(argv)
    total_before = total_after = 0
    failed = 0
    for path in _files(args.paths):
        try:
            text = path.read_text()
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            RunResult.model_validate(data)
            compact = compact_result_text(data)
        except (OSError, ValueError, ValidationError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"{path}: skipped, not a run result ({first})", file=sys.stderr)
            failed += 1
            continue
        before, after = len(text.encode()), len(compact.encode())
        if compact != text and not args.dry_run:
            after = write_compact_result(data, path)
        total_before += before
        total_after += after
        state = "unchanged" if compact == text else "would write" if args.dry_run else "written"
        print(f"{path}: {before} -> {after} bytes ({state})")
    print(f"total: {total_before} -> {total_after} bytes"
          + (f" ({100 * (1 - total_after / total_before):.0f}% smaller)" if total_before else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
