"""The wheel: every package folder is listed in pyproject.toml, the Alembic scripts ship as coordinator.migrations
(no top-level ``migrations``), the licence and the py.typed markers ship, and `mfcpl db upgrade` works from the
wheel's files alone (not from the checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "mfcpl", "coordinator", "client_sdk", "migrations"]


def test_pyproject_lists_every_package_folder() -> None:
    """The package-dir mapping of migrations/ needs an explicit package list; a new package folder must join it."""
    setuptools_config = PYPROJECT["tool"]["setuptools"]
    assert setuptools_config["package-dir"] == {"coordinator.migrations": "migrations"}
    on_disk = set(find_packages(str(ROOT), include=["mfcpl", "mfcpl.*", "coordinator", "coordinator.*", "client_sdk",
                                                    "client_sdk.*"]))
    on_disk |= {"coordinator.migrations" + p.removeprefix("migrations")
                for p in find_packages(str(ROOT), include=["migrations", "migrations.*"])}
    listed = set(setuptools_config["packages"])
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - on_disk == set(), "remove these from [tool.setuptools] packages in pyproject.toml"


def test_project_metadata() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    extras = project["optional-dependencies"]
    assert {"server", "client", "text", "plots", "dev"} <= set(extras)
    assert extras["client"] == ["torch>=2.2,<3"]  # a range; the exact CPU pin lives in constraints.txt only
    assert any(r.startswith("transformers") for r in extras["text"])
    assert any(r.startswith("matplotlib") for r in extras["plots"])
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()
    assert "'.[server,client,text,plots,dev]'" in (ROOT / "Makefile").read_text()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built without isolation from a copy of the sources the images copy (not in the checkout)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(work / "dist"),
                           str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (built,) = (work / "dist").glob("mfcpl-*.whl")
    return built


def test_wheel_ships_the_migrations_inside_the_coordinator(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"mfcpl", "coordinator", "client_sdk"}, tops  # no top-level migrations/
    assert {"coordinator/migrations/__init__.py", "coordinator/migrations/env.py",
            "coordinator/migrations/script.py.mako", "coordinator/migrations/versions/__init__.py"} <= set(names)
    versions = {n for n in names if n.startswith("coordinator/migrations/versions/") and not n.endswith("__.py")}
    assert versions == {"coordinator/migrations/versions/" + p.name for p in (ROOT / "migrations/versions").glob("*.py")
                        if p.name != "__init__.py"}
    assert {"mfcpl/py.typed", "coordinator/py.typed", "client_sdk/py.typed"} <= set(names)
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert f"{dist_info}/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert 'Requires-Dist: torch<3,>=2.2; extra == "client"' in metadata.splitlines()


@pytest.fixture(scope="module")
def unpacked(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    site = tmp_path_factory.mktemp("site")
    zipfile.ZipFile(wheel).extractall(site)
    yield site


def _from_wheel(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Python with the unpacked wheel first on sys.path, run outside the checkout (its folders are not on the path;
    the venv's editable finder only answers what the path does not)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFCPL_")}
    env |= {"PYTHONPATH": str(site), "MFCPL_STATE_DIR": str(cwd / "state")}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_db_upgrade_runs_from_the_wheel(unpacked: Path, tmp_path: Path) -> None:
    probe = _from_wheel(unpacked, tmp_path, "-c", "import coordinator.migrations as m, coordinator.db.migrate as d; "
                        "print(m.__file__); print(d.migrations_dir())")
    assert probe.returncode == 0, probe.stderr
    module_file, scripts = probe.stdout.split()
    assert Path(module_file).is_relative_to(unpacked) and Path(scripts) == unpacked / "coordinator" / "migrations"
    top_level = _from_wheel(unpacked, tmp_path, "-c", "import migrations")
    assert "No module named 'migrations'" in top_level.stderr
    for _ in range(2):
        upgraded = _from_wheel(unpacked, tmp_path, "-m", "mfcpl", "db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        assert upgraded.stdout.startswith("schema at ")
    current = _from_wheel(unpacked, tmp_path, "-m", "mfcpl", "db", "current").stdout.split()
    assert current[0] == "current" and current[1] == current[3] != "None"
    assert (tmp_path / "state" / "mfcpl.db").is_file()


def test_alembic_ini_still_finds_the_scripts_for_developers() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from coordinator.db.migrate import head_revision

    config = Config(str(ROOT / "alembic.ini"))
    assert ScriptDirectory.from_config(config).get_current_head() == head_revision()
