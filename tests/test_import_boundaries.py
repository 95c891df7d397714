"""The package boundaries, checked in fresh interpreters: the coordinator and the client SDK never import each other,
the wire package imports neither, and neither the coordinator nor the wire package imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Every module of a package, imported one after the other in one interpreter; then the loaded top-level names.
PROBE = """
import importlib, pkgutil, sys
package = importlib.import_module({package!r})
names = [{package!r}] + [m.name for m in pkgutil.walk_packages(package.__path__, {package!r} + ".")]
for name in names:
    importlib.import_module(name)
print(len(names))
loaded = sorted({{m for m in sys.modules if m.split(".")[0] in ("coordinator", "client_sdk", "torch", "mfcpl")}})
print(" ".join(loaded))
"""


def _loaded(package: str) -> tuple[int, set[str]]:
    result = subprocess.run([sys.executable, "-c", PROBE.format(package=package)], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    count, loaded = result.stdout.strip().split("\n")
    return int(count), set(loaded.split())


def _roots(loaded: set[str]) -> set[str]:
    roots = {m.split(".")[0] for m in loaded}
    if any(m == "mfcpl" or m.startswith("mfcpl.") and not m.startswith("mfcpl.wire") for m in loaded):
        roots.add("mfcpl (outside mfcpl.wire)")
    return roots


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("mfcpl.wire", {"coordinator", "client_sdk", "torch"}),
        ("coordinator", {"client_sdk", "torch"}),
        ("client_sdk", {"coordinator"}),
    ],
)
def test_package_imports_stay_inside_their_boundary(package: str, forbidden: set[str]) -> None:
    count, loaded = _loaded(package)
    assert count > 1
    roots = _roots(loaded)
    assert not roots & forbidden, sorted(m for m in loaded if m.split(".")[0] in forbidden)[:10]
    # Above the wire package, only the umbrella's own __init__ (the version) may be loaded.
    outside = {m for m in loaded if m.startswith("mfcpl.") and not m.startswith("mfcpl.wire")}
    assert not outside, sorted(outside)


def test_probe_sees_an_import_it_would_forbid() -> None:
    """The probe itself can fail: walking the client SDK loads torch (its trainer), which the wire must never."""
    _, loaded = _loaded("client_sdk")
    assert "torch" in _roots(loaded)
