"""Two folders, two variables: MFCPL_STATE_DIR is the coordinator's state (SQLite file, fs blobs, admin token),
MFCPL_DATASETS_DIR the client's datasets. The old MFCPL_DATA_DIR still sets the coordinator's state folder, with a
deprecation warning, unless MFCPL_STATE_DIR is set; the datasets ignore it."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from client_sdk.data.federated import DEFAULT_CACHE_DIR, default_data_dir
from coordinator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [k for k in os.environ if k.startswith("MFCPL_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env from the checkout


def test_state_dir_places_the_coordinators_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MFCPL_STATE_DIR", str(tmp_path / "state"))
    settings = Settings()
    assert settings.state_dir == tmp_path / "state"
    assert settings.db_url == f"sqlite:///{(tmp_path / 'state' / 'mfcpl.db').resolve()}"
    assert settings.blobs_path == tmp_path / "state" / "blobs"
    assert settings.admin_token_file == tmp_path / "state" / "admin_token"
    assert "MFCPL_DATA_DIR" not in caplog.text
    assert Settings(state_dir=tmp_path / "other").state_dir == tmp_path / "other"


def test_default_state_dir_is_relative(tmp_path: Path) -> None:
    assert Settings().state_dir == Path("mfcpl-data")


def test_deprecated_data_dir_still_sets_the_state_dir_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MFCPL_DATA_DIR", str(tmp_path / "old"))
    with caplog.at_level(logging.WARNING, logger="mfcpl.settings"):
        settings = Settings()
    assert settings.state_dir == tmp_path / "old" and settings.admin_token_file == tmp_path / "old" / "admin_token"
    assert "MFCPL_DATA_DIR is deprecated" in caplog.text and "MFCPL_STATE_DIR" in caplog.text


def test_deprecated_data_dir_in_dotenv_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / ".env").write_text(f"MFCPL_DATA_DIR={tmp_path / 'old'}\n")
    with caplog.at_level(logging.WARNING, logger="mfcpl.settings"):
        assert Settings().state_dir == tmp_path / "old"
    assert "deprecated" in caplog.text


def test_state_dir_wins_over_the_deprecated_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MFCPL_DATA_DIR", str(tmp_path / "old"))
    monkeypatch.setenv("MFCPL_STATE_DIR", str(tmp_path / "new"))
    with caplog.at_level(logging.WARNING, logger="mfcpl.settings"):
        assert Settings().state_dir == tmp_path / "new"
    assert "MFCPL_DATA_DIR is ignored" in caplog.text


def test_datasets_dir_is_its_own_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MFCPL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MFCPL_DATA_DIR", str(tmp_path / "old"))
    assert default_data_dir() == DEFAULT_CACHE_DIR.expanduser()
    monkeypatch.setenv("MFCPL_DATASETS_DIR", str(tmp_path / "datasets"))
    assert default_data_dir() == tmp_path / "datasets"
    assert default_data_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_the_old_name_is_gone_from_the_repository() -> None:
    """Only the deliberate deprecation handling (settings, the CLI's token lookup, the docs' note) names it."""
    listed = subprocess.run(["git", "grep", "--untracked", "-l", "MFCPL_DATA_DIR"], cwd=ROOT, capture_output=True,
                            text=True)
    if listed.returncode not in (0, 1):
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    allowed = {"coordinator/settings.py", "mfcpl/cli.py", "docs/operations.md",
               "tests/packaging/test_missing_extras.py", "tests/packaging/test_state_and_datasets_dirs.py"}
    assert set(listed.stdout.split()) <= allowed
