"""``python -m client_sdk.data {uci_har,fsdd_av,missing} ...``: dataset tools (download, export, counts, missing
modalities)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from client_sdk.data import fsdd, missing, uci_har

COMMANDS = {"uci_har": uci_har.main, "fsdd_av": fsdd.main, "missing": missing.main}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(
            "usage: python -m client_sdk.data {uci_har,fsdd_av,missing} ...\n"
            "  uci_har fetch [--dest DIR] [--url URL] [--sha256 HEX]   download the official UCI-HAR zip\n"
            "  uci_har info [--data-dir DIR]                           load UCI-HAR and print its counts\n"
            "  fsdd_av export DIR [--data-dir D] [--format F]          write FSDD+mfeat as a pooled data set folder\n"
            "  missing [--rule client|sample|client_varied] [--q Q] [--seeds ...]  the missing-modality counts",
            file=sys.stderr,
        )
        return 2
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
