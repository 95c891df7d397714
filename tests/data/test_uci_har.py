"""UCI-HAR loaders: the shared npz, the official folder / zip layouts (served over real loopback HTTP)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from client_sdk.data.__main__ import main
from client_sdk.data.federated import DatasetNotFoundError
from client_sdk.data.uci_har import (
    CLASS_NAMES,
    TEST_SUBJECTS,
    TRAIN_SUBJECTS,
    DownloadError,
    UciHar,
    UciHarFormatError,
    fetch_uci_har,
    load_uci_har,
    load_uci_har_dir,
    load_uci_har_npz,
    load_uci_har_zip,
    rebuild_segments,
    znormalize_windows,
)

from .conftest import FileServer

FOLDER = "UCI HAR Dataset"


def test_npz_counts_match_the_readme(uci: UciHar) -> None:
    assert len(uci) == 10_299
    assert uci.acc.shape == uci.gyro.shape == (10_299, 128, 3)
    assert uci.acc.dtype == uci.gyro.dtype == np.float32
    train, test = uci.split == "train", uci.split == "test"
    assert int(train.sum()) == 7_352 and int(test.sum()) == 2_947
    assert np.bincount(uci.label[train]).tolist() == [1226, 1073, 986, 1286, 1374, 1407]
    assert np.bincount(uci.label[test]).tolist() == [496, 471, 420, 491, 532, 537]
    assert sorted(set(uci.subject[train].tolist())) == list(TRAIN_SUBJECTS)
    assert sorted(set(uci.subject[test].tolist())) == list(TEST_SUBJECTS)
    assert len(np.unique(uci.segment)) == 857
    assert uci.class_names == CLASS_NAMES
    # the first official training window (README "Checks done"): subject 1, STANDING
    first = np.flatnonzero(np.isclose(uci.acc[:, 0, 0], 1.808515e-04, rtol=0, atol=1e-10) & train)
    assert len(first) == 1
    assert uci.subject[first[0]] == 1 and uci.label[first[0]] == CLASS_NAMES.index("STANDING")


def test_znormalize_per_window_and_channel() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 5.0, size=(4, 128, 3)).astype(np.float32)
    x[1, :, 2] = 7.0  # a constant channel must give zeros, not NaN
    z = znormalize_windows(x)
    assert z.dtype == np.float32 and z.shape == x.shape
    assert np.all(np.isfinite(z))
    np.testing.assert_allclose(z[1, :, 2], 0.0)
    expected = (x[2, :, 0] - x[2, :, 0].mean()) / (x[2, :, 0].std() + 1e-5)
    np.testing.assert_allclose(z[2, :, 0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z[[0, 2, 3]].mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[[0, 2, 3]].std(axis=1), 1.0, atol=1e-4)


def test_arrays_normalise_and_keep_labels(uci: UciHar) -> None:
    idx = np.array([0, 5, 9000])
    arrays = uci.arrays(idx)
    np.testing.assert_allclose(arrays.inputs["gyro"], znormalize_windows(uci.gyro[idx]))
    assert arrays.labels.tolist() == uci.label[idx].tolist()
    assert arrays.complete.all()
    raw = uci.arrays(idx, normalize=False)
    np.testing.assert_array_equal(raw.inputs["acc"], uci.acc[idx])


def test_rebuilt_segments_equal_the_npz_segments(uci: UciHar) -> None:
    rebuilt = rebuild_segments(uci.acc, uci.subject, uci.split)
    # the same grouping: a one-to-one map between the two id sets
    pairs = np.unique(np.stack([rebuilt, uci.segment]), axis=1)
    assert pairs.shape[1] == len(np.unique(uci.segment)) == len(np.unique(rebuilt)) == 857


# ---------------------------------------------------------------------------------- a small official layout


def _rows(uci: UciHar, subject: int, count: int, label: int = 0) -> np.ndarray:
    """``count`` time-consecutive rows of the first segment of ``subject`` with ``label``."""
    rows = np.flatnonzero((uci.subject == subject) & (uci.label == label))
    seg_rows = np.flatnonzero(uci.segment == uci.segment[rows[0]])
    return seg_rows[:count]


@pytest.fixture(scope="module")
def small(uci: UciHar) -> dict[str, np.ndarray]:
    """Rows picked for a small layout: split -> row numbers in the npz, in recording order."""
    train = np.concatenate([_rows(uci, 1, 3), _rows(uci, 1, 2, label=5), _rows(uci, 3, 2)])
    test = _rows(uci, 2, 3)
    assert uci.label[train[0]] != uci.label[train[3]]
    return {"train": train, "test": test}


def _official_files(uci: UciHar, small: dict[str, np.ndarray]) -> dict[str, bytes]:
    def table(values: np.ndarray) -> bytes:
        # 9 significant digits: every float32 survives the text round trip exactly
        return "".join(" " + " ".join(f"{v: .8e}" for v in row) + "\n" for row in values).encode()

    files = {"activity_labels.txt": "".join(f"{i + 1} {n}\n" for i, n in enumerate(CLASS_NAMES)).encode()}
    for split, rows in small.items():
        files[f"{split}/y_{split}.txt"] = "".join(f"{v + 1}\n" for v in uci.label[rows]).encode()
        files[f"{split}/subject_{split}.txt"] = "".join(f"{v}\n" for v in uci.subject[rows]).encode()
        for signal, arr in (("body_acc", uci.acc), ("body_gyro", uci.gyro)):
            for a, axis in enumerate("xyz"):
                files[f"{split}/Inertial Signals/{signal}_{axis}_{split}.txt"] = table(arr[rows, :, a])
    return files


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return buf.getvalue()


def _plain_zip(files: dict[str, bytes]) -> bytes:
    return _zip({f"{FOLDER}/{k}": v for k, v in files.items()} | {f"__MACOSX/{FOLDER}/._train": b"junk"})


def _nested_zip(files: dict[str, bytes]) -> bytes:
    """Like the UCI archive's download: an outer zip holding ``UCI HAR Dataset.zip`` (plus macOS litter)."""
    return _zip({f"{FOLDER}.zip": _plain_zip(files), f"__MACOSX/._{FOLDER}.zip": b"junk", "README.txt": b"hi"})


def _check_round_trip(loaded: UciHar, uci: UciHar, small: dict[str, np.ndarray]) -> None:
    rows = np.concatenate([small["train"], small["test"]])
    np.testing.assert_array_equal(loaded.acc, uci.acc[rows])
    np.testing.assert_array_equal(loaded.gyro, uci.gyro[rows])
    assert loaded.label.tolist() == uci.label[rows].tolist()
    assert loaded.subject.tolist() == uci.subject[rows].tolist()
    assert loaded.split.tolist() == ["train"] * 7 + ["test"] * 3
    # chained on the 50% overlaps: 3 + 2 windows of subject 1, 2 of subject 3, 3 of test subject 2
    assert loaded.segment.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert loaded.class_names == CLASS_NAMES


def test_fetch_nested_zip_over_loopback_and_load(
    uci: UciHar, small: dict[str, np.ndarray], file_server: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    body = _nested_zip(_official_files(uci, small))
    file_server.files["/static/public/240/human+activity+recognition+using+smartphones.zip"] = body
    url = file_server.url + "/static/public/240/human+activity+recognition+using+smartphones.zip"
    dest = tmp_path / "uci_har"

    path = fetch_uci_har(dest, url=url, sha256=hashlib.sha256(body).hexdigest())
    assert path == dest / "human+activity+recognition+using+smartphones.zip"
    assert path.read_bytes() == body
    assert sorted(p.name for p in dest.iterdir()) == [path.name]  # no temporary file left behind
    assert "MiB" in capsys.readouterr().err

    _check_round_trip(load_uci_har_zip(path), uci, small)
    _check_round_trip(load_uci_har(tmp_path), uci, small)  # <data_dir>/uci_har/*.zip is found

    # a second fetch with the right checksum keeps the file and does not download again
    fetch_uci_har(dest, url=url, sha256=hashlib.sha256(body).hexdigest())
    assert len(file_server.requests) == 1


def test_plain_zip_and_folder_layouts(uci: UciHar, small: dict[str, np.ndarray], tmp_path: Path) -> None:
    files = _official_files(uci, small)
    plain = tmp_path / "plain.zip"
    plain.write_bytes(_plain_zip(files))
    _check_round_trip(load_uci_har_zip(plain), uci, small)

    root = tmp_path / "data" / "uci_har" / FOLDER
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
    _check_round_trip(load_uci_har_dir(root), uci, small)
    _check_round_trip(load_uci_har_dir(root.parent), uci, small)
    _check_round_trip(load_uci_har(tmp_path / "data"), uci, small)


def test_bad_layouts_give_clear_errors(uci: UciHar, small: dict[str, np.ndarray], tmp_path: Path) -> None:
    not_zip = tmp_path / "x.zip"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(UciHarFormatError, match="not a zip"):
        load_uci_har_zip(not_zip)
    other = tmp_path / "other.zip"
    other.write_bytes(_zip({"a.txt": b"1"}))
    with pytest.raises(UciHarFormatError, match="y_train.txt"):
        load_uci_har_zip(other)
    files = _official_files(uci, small)
    files["train/Inertial Signals/body_gyro_y_train.txt"] = b"1 2 3\n"
    broken = tmp_path / "broken.zip"
    broken.write_bytes(_plain_zip(files))
    with pytest.raises(UciHarFormatError, match="body_gyro_y_train"):
        load_uci_har_zip(broken)
    with pytest.raises(DatasetNotFoundError, match="fetch"):
        load_uci_har(tmp_path / "empty")
    with pytest.raises(DatasetNotFoundError):
        load_uci_har_npz(tmp_path / "none.npz")


def test_fetch_refuses_bad_checksum_and_http_errors(file_server: FileServer, tmp_path: Path) -> None:
    file_server.files["/d.zip"] = b"x" * 100_000
    with pytest.raises(DownloadError, match="sha256"):
        fetch_uci_har(tmp_path, url=file_server.url + "/d.zip", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a partial download
    with pytest.raises(DownloadError, match="404"):
        fetch_uci_har(tmp_path, url=file_server.url + "/missing.zip", progress=False)
    with pytest.raises(DownloadError, match="ConnectError"):
        fetch_uci_har(tmp_path, url="http://127.0.0.1:9/d.zip", progress=False, timeout_s=2)
    assert list(tmp_path.iterdir()) == []


def test_cli_fetch_and_info(
    file_server: FileServer, tmp_path: Path, shared_data_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    file_server.files["/d.zip"] = b"payload"
    assert main(["uci_har", "fetch", "--dest", str(tmp_path), "--url", file_server.url + "/d.zip"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "d.zip")
    assert main(["uci_har", "fetch", "--dest", str(tmp_path), "--url", file_server.url + "/gone.zip", "--force"]) == 1
    assert "404" in capsys.readouterr().err
    assert main(["uci_har", "info", "--data-dir", str(shared_data_dir)]) == 0
    assert "train: 7352 windows" in capsys.readouterr().out
    assert main([]) == 2 and "usage" in capsys.readouterr().err
