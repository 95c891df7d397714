"""UCI-HAR (Human Activity Recognition Using Smartphones): loaders, download and the FedMultimodal partition.

Sources, in the order :func:`load_uci_har` looks for them under ``<data_dir>/uci_har/``:

1. ``uci_har.npz`` - the repackaged arrays (``acc``, ``gyro``, ``label``, ``subject``, ``split``, ``segment``);
2. ``UCI HAR Dataset/`` - the official folder layout;
3. any ``*.zip`` - the official download (nested: the outer zip holds ``UCI HAR Dataset.zip``) or a plain zip
   of the folder.

The official files keep each subject's windows in time order, so ``segment`` (runs of 50%-overlapping
windows) is rebuilt by chaining rows whose overlaps match exactly; the npz ships it precomputed.

Run ``python -m client_sdk.data uci_har fetch`` to download the official zip into the data directory.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
import numpy as np

from client_sdk.data.arrays import MultimodalArrays
from client_sdk.data.federated import ClientShard, DatasetNotFoundError, FederatedDataset, default_data_dir
from client_sdk.data.partition import dirichlet_label_partition
from mfcpl.wire.schemas import ModalityKind, ModalitySpec

OFFICIAL_URL = "https://archive.ics.uci.edu/static/public/240/human+activity+recognition+using+smartphones.zip"
NPZ_NAME = "uci_har.npz"
DATASET_DIR = "uci_har"
OFFICIAL_FOLDER = "UCI HAR Dataset"
WINDOW = 128
HALF = WINDOW // 2
NORM_EPS = 1e-5
CLASS_NAMES = ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING"]
NUM_CLASSES = len(CLASS_NAMES)
TRAIN_SUBJECTS = (1, 3, 5, 6, 7, 8, 11, 14, 15, 16, 17, 19, 21, 22, 23, 25, 26, 27, 28, 29, 30)
TEST_SUBJECTS = (2, 4, 9, 10, 12, 13, 18, 20, 24)
MODALITIES = [
    ModalitySpec(name="acc", kind=ModalityKind.TIMESERIES, shape=[WINDOW, 3]),
    ModalitySpec(name="gyro", kind=ModalityKind.TIMESERIES, shape=[WINDOW, 3]),
]
_SIGNALS = {"acc": "body_acc", "gyro": "body_gyro"}


class UciHarFormatError(ValueError):
    """Files that exist but do not follow the UCI-HAR layout."""


class DownloadError(RuntimeError):
    """A download that failed: HTTP status, network error or checksum mismatch."""


@dataclass
class UciHar:
    """All windows of UCI-HAR as arrays; rows of every array line up."""

    acc: np.ndarray  # [N, 128, 3] float32, body_acc xyz (g)
    gyro: np.ndarray  # [N, 128, 3] float32, body_gyro xyz (rad/s)
    label: np.ndarray  # [N] int64, 0..5
    subject: np.ndarray  # [N] int64, 1..30
    split: np.ndarray  # [N] str, "train" / "test"
    segment: np.ndarray  # [N] int64, id of a run of consecutive 50%-overlapping windows
    class_names: list[str]

    def __post_init__(self) -> None:
        n = len(self.label)
        for name in ("acc", "gyro", "subject", "split", "segment"):
            if len(getattr(self, name)) != n:
                raise UciHarFormatError(f"{name} has {len(getattr(self, name))} rows, label has {n}")
        for name in ("acc", "gyro"):
            if getattr(self, name).shape[1:] != (WINDOW, 3):
                raise UciHarFormatError(f"{name} must be [N, {WINDOW}, 3], got {list(getattr(self, name).shape)}")
        if n and (self.label.min() < 0 or self.label.max() >= NUM_CLASSES):
            raise UciHarFormatError(f"labels must lie in 0..{NUM_CLASSES - 1}")

    def __len__(self) -> int:
        return len(self.label)

    def arrays(self, index: np.ndarray | None = None, *, normalize: bool = True) -> MultimodalArrays:
        """The windows ``index`` (all when None) as complete :class:`MultimodalArrays` (acc, gyro)."""
        sel = slice(None) if index is None else index
        inputs = {"acc": self.acc[sel], "gyro": self.gyro[sel]}
        if normalize:
            inputs = {m: znormalize_windows(x) for m, x in inputs.items()}
        else:
            inputs = {m: np.ascontiguousarray(x, dtype=np.float32) for m, x in inputs.items()}
        labels = self.label[sel].astype(np.int64)
        present = {m: np.ones(len(labels), dtype=bool) for m in inputs}
        return MultimodalArrays(inputs=inputs, present=present, labels=labels)


def znormalize_windows(x: np.ndarray, eps: float = NORM_EPS) -> np.ndarray:
    """(x - mean) / (std + eps) per window and channel over the time axis; ``x`` is [N, T, C]."""
    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(axis=1, keepdims=True)
    std = x64.std(axis=1, keepdims=True)
    return ((x64 - mean) / (std + eps)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- loaders


def load_uci_har_npz(path: str | os.PathLike[str]) -> UciHar:
    """Read the repackaged npz (numeric and fixed-width unicode arrays only; never unpickles)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = {"acc", "gyro", "label", "subject", "split", "segment"} - set(f.files)
            if missing:
                raise UciHarFormatError(f"{path}: missing arrays {sorted(missing)}")
            names = [str(c) for c in f["class_names"]] if "class_names" in f.files else list(CLASS_NAMES)
            return UciHar(
                acc=f["acc"].astype(np.float32, copy=False),
                gyro=f["gyro"].astype(np.float32, copy=False),
                label=f["label"].astype(np.int64, copy=False),
                subject=f["subject"].astype(np.int64, copy=False),
                split=f["split"].astype(str),
                segment=f["segment"].astype(np.int64, copy=False),
                class_names=names,
            )
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(f"no UCI-HAR npz at {path}") from exc


def _parse_rows(data: bytes, name: str, width: int | None) -> np.ndarray:
    values = np.array(data.split(), dtype=np.float64)
    if width is None:
        return values
    if values.size % width:
        raise UciHarFormatError(f"{name}: {values.size} values is not a whole number of {width}-sample rows")
    return values.reshape(-1, width)


def _read_official(read: Callable[[str], bytes]) -> UciHar:
    """Both splits from a reader of paths relative to the ``UCI HAR Dataset`` folder."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("acc", "gyro", "label", "subject", "split")}
    for split in ("train", "test"):
        labels = _parse_rows(read(f"{split}/y_{split}.txt"), f"y_{split}.txt", None).astype(np.int64) - 1
        subjects = _parse_rows(read(f"{split}/subject_{split}.txt"), f"subject_{split}.txt", None).astype(np.int64)
        if len(labels) != len(subjects):
            raise UciHarFormatError(f"{split}: {len(labels)} labels but {len(subjects)} subjects")
        for modality, signal in _SIGNALS.items():
            axes = []
            for axis in "xyz":
                fname = f"{signal}_{axis}_{split}.txt"
                rows = _parse_rows(read(f"{split}/Inertial Signals/{fname}"), fname, WINDOW)
                if len(rows) != len(labels):
                    raise UciHarFormatError(f"{fname}: {len(rows)} rows but {len(labels)} labels")
                axes.append(rows)
            parts[modality].append(np.stack(axes, axis=-1).astype(np.float32))
        parts["label"].append(labels)
        parts["subject"].append(subjects)
        parts["split"].append(np.full(len(labels), split))
    try:
        names_txt = read("activity_labels.txt").decode().split()
        class_names = names_txt[1::2] if len(names_txt) == 2 * NUM_CLASSES else list(CLASS_NAMES)
    except (KeyError, FileNotFoundError):
        class_names = list(CLASS_NAMES)
    acc = np.concatenate(parts["acc"])
    subject = np.concatenate(parts["subject"])
    split_arr = np.concatenate(parts["split"])
    return UciHar(
        acc=acc,
        gyro=np.concatenate(parts["gyro"]),
        label=np.concatenate(parts["label"]),
        subject=subject,
        split=split_arr,
        segment=rebuild_segments(acc, subject, split_arr),
        class_names=class_names,
    )


def rebuild_segments(acc: np.ndarray, subject: np.ndarray, split: np.ndarray | None = None) -> np.ndarray:
    """Segment ids for windows in recording order: row k+1 continues row k's segment when both belong to the
    same subject (and split) and row k's last 64 samples equal row k+1's first 64 exactly (all 3 axes)."""
    n = len(acc)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    continues = np.all(acc[:-1, HALF:, :] == acc[1:, :HALF, :], axis=(1, 2))
    continues &= subject[:-1] == subject[1:]
    if split is not None:
        continues &= split[:-1] == split[1:]
    starts = np.concatenate([[True], ~continues])
    return (np.cumsum(starts) - 1).astype(np.int64)


def load_uci_har_dir(path: str | os.PathLike[str]) -> UciHar:
    """Read the official folder layout; ``path`` is the ``UCI HAR Dataset`` folder or its parent."""
    root = Path(path)
    if not (root / "train" / "y_train.txt").is_file() and (root / OFFICIAL_FOLDER).is_dir():
        root = root / OFFICIAL_FOLDER
    if not (root / "train" / "y_train.txt").is_file():
        raise DatasetNotFoundError(f"{path}: no '{OFFICIAL_FOLDER}/train/y_train.txt' (official UCI-HAR layout)")

    def read(rel: str) -> bytes:
        return (root / rel).read_bytes()

    return _read_official(read)


def _official_prefix(names: Sequence[str]) -> str | None:
    for name in names:
        if name.endswith("train/y_train.txt") and not name.startswith("__MACOSX"):
            return name[: -len("train/y_train.txt")]
    return None


def load_uci_har_zip(path: str | os.PathLike[str]) -> UciHar:
    """Read the official download: a zip of the folder, or the outer zip holding ``UCI HAR Dataset.zip``."""
    try:
        outer = zipfile.ZipFile(path)
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(f"no UCI-HAR zip at {path}") from exc
    except zipfile.BadZipFile as exc:
        raise UciHarFormatError(f"{path}: not a zip file ({exc})") from exc
    with outer:
        archive = outer
        prefix = _official_prefix(outer.namelist())
        if prefix is None:
            inner = [n for n in outer.namelist() if n.lower().endswith(".zip") and not n.startswith("__MACOSX")]
            for name in inner:
                candidate = zipfile.ZipFile(io.BytesIO(outer.read(name)))
                prefix = _official_prefix(candidate.namelist())
                if prefix is not None:
                    archive = candidate
                    break
        if prefix is None:
            raise UciHarFormatError(
                f"{path}: neither it nor a zip inside it holds '{OFFICIAL_FOLDER}/train/y_train.txt'"
            )

        def read(rel: str) -> bytes:
            return archive.read(prefix + rel)

        return _read_official(read)


def load_uci_har(data_dir: str | os.PathLike[str] | None = None) -> UciHar:
    """UCI-HAR from ``<data_dir>/uci_har/`` (npz, else official folder, else zip); see the module docstring."""
    base = default_data_dir(data_dir)
    folder = base / DATASET_DIR
    if (folder / NPZ_NAME).is_file():
        return load_uci_har_npz(folder / NPZ_NAME)
    if (folder / OFFICIAL_FOLDER / "train" / "y_train.txt").is_file():
        return load_uci_har_dir(folder)
    zips = sorted(folder.glob("*.zip")) if folder.is_dir() else []
    if zips:
        return load_uci_har_zip(zips[0])
    raise DatasetNotFoundError(
        f"UCI-HAR not found in {folder} (looked for {NPZ_NAME}, '{OFFICIAL_FOLDER}/', *.zip). "
        f"Download it with: python -m client_sdk.data uci_har fetch --dest {folder}"
    )


# ---------------------------------------------------------------------------------------------- download


def _file_name(url: str) -> str:
    name = unquote(Path(urlparse(url).path).name)
    return name or "download.zip"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_uci_har(
    dest_dir: str | os.PathLike[str] | None = None,
    url: str = OFFICIAL_URL,
    sha256: str | None = None,
    *,
    timeout_s: float = 60.0,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Download ``url`` into ``dest_dir`` (default ``<data dir>/uci_har``) and return the file's path.

    Streams to a temporary file in the same folder and renames it into place only when complete (and,
    when ``sha256`` is given, only when the checksum matches), so an interrupted download never leaves a
    truncated file under the final name. An existing file is kept unless ``force`` or its checksum differs.
    """
    dest = Path(dest_dir) if dest_dir is not None else default_data_dir() / DATASET_DIR
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / _file_name(url)
    if target.is_file() and not force and (sha256 is None or _sha256(target) == sha256.lower()):
        return target
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=dest)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, httpx.stream(
            "GET", url, timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 15.0)), follow_redirects=True
        ) as response:
            if response.status_code != 200:
                raise DownloadError(f"GET {url}: HTTP {response.status_code}")
            total = int(response.headers.get("content-length") or 0)
            done, last_report = 0, 0.0
            for chunk in response.iter_bytes(1 << 16):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                now = time.monotonic()
                if progress and now - last_report > 0.5:
                    last_report = now
                    _report(target.name, done, total)
            if progress:
                _report(target.name, done, total, end="\n")
            if total and done != total:
                raise DownloadError(f"GET {url}: got {done} bytes, expected {total}")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise DownloadError(f"{url}: sha256 {digest.hexdigest()} does not match the expected {sha256.lower()}")
        os.replace(tmp, target)
    except httpx.HTTPError as exc:
        raise DownloadError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _report(name: str, done: int, total: int, end: str = "") -> None:
    mib = done / 2**20
    if total:
        msg = f"\r{name}: {mib:.1f} / {total / 2**20:.1f} MiB ({100 * done / total:.0f}%)"
    else:
        msg = f"\r{name}: {mib:.1f} MiB"
    print(msg, end=end, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- partition


def _subject_rng(seed: int, subject: int, stream: int) -> np.random.Generator:
    # One independent stream per (seed, subject, purpose): a slice of subjects gets exactly the shards
    # and dev cut it has in the full partition.
    return np.random.default_rng(np.random.SeedSequence([seed, subject, stream]))


def cut_dev_along_segments(
    label: np.ndarray, segment: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """[n] bool dev mask over one subject's windows that takes whole segments only.

    Classes are visited in random order; within a class, segments in random order, and a segment is taken
    when that brings the dev count closer to the class's target: ``fraction`` of its windows plus what
    earlier classes fell short (or minus what they overshot). Segments hold about a quarter of a class, so
    without the carried error every class would round up and dev would hold ~23% instead of 20%.
    """
    dev = np.zeros(len(label), dtype=bool)
    carried = 0.0
    classes = np.unique(label)
    rng.shuffle(classes)
    for cls in classes:
        in_cls = label == cls
        target = fraction * in_cls.sum() + carried
        segs = np.unique(segment[in_cls])
        rng.shuffle(segs)
        taken = 0
        for seg in segs:
            rows = in_cls & (segment == seg)
            size = int(rows.sum())
            if abs(taken + size - target) < abs(taken - target):
                dev |= rows
                taken += size
        carried = target - taken
    return dev


def uci_har_federation(
    data: UciHar | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    alpha: float = 0.1,
    shards_per_subject: int = 5,
    dev_fraction: float = 0.2,
    min_shard_size: int = 5,
    seed: int = 0,
    subjects: Sequence[int] | None = None,
    test_subjects: Sequence[int] | None = None,
    max_clients: int | None = None,
    normalize: bool = True,
) -> FederatedDataset:
    """The FedMultimodal UCI-HAR federation (docs/method.md "Protocol").

    For each official training subject (or each of ``subjects``): ``dev_fraction`` of its windows, cut along
    ``segment``, go to the pooled dev set; the rest is split into ``shards_per_subject`` Dirichlet(alpha)
    label shards of >= ``min_shard_size`` windows, one client each, named ``s{subject:02d}_k{shard}``.
    Test: the official test subjects (or ``test_subjects``). ``max_clients`` keeps the first clients only.
    Every random draw is a function of (seed, subject), so a slice equals the same part of the full partition.
    """
    if data is None:
        data = load_uci_har(data_dir)
    if not 0 <= dev_fraction < 1:
        raise ValueError("dev_fraction must lie in [0, 1)")
    train_pool = sorted(int(s) for s in np.unique(data.subject[data.split == "train"]))
    test_pool = sorted(int(s) for s in np.unique(data.subject[data.split == "test"]))
    chosen = _check_subjects(subjects, train_pool, "training")
    chosen_test = _check_subjects(test_subjects, test_pool, "test")

    clients: list[ClientShard] = []
    dev_parts: list[np.ndarray] = []
    for subject in chosen:
        rows = np.flatnonzero((data.subject == subject) & (data.split == "train"))
        dev_mask = cut_dev_along_segments(
            data.label[rows], data.segment[rows], dev_fraction, _subject_rng(seed, subject, 0)
        )
        dev_parts.append(rows[dev_mask])
        train_rows = rows[~dev_mask]
        shards = dirichlet_label_partition(
            data.label[train_rows], shards_per_subject, alpha, _subject_rng(seed, subject, 1), min_size=min_shard_size
        )
        for k, pos in enumerate(shards):
            idx = train_rows[pos]
            clients.append(
                ClientShard(name=f"s{subject:02d}_k{k}", data=data.arrays(idx, normalize=normalize), indices=idx,
                            subject=subject)
            )
    if max_clients is not None:
        if max_clients < 1:
            raise ValueError("max_clients must be >= 1")
        clients = clients[:max_clients]
    dev_idx = np.sort(np.concatenate(dev_parts)) if dev_parts else np.zeros(0, dtype=np.int64)
    test_idx = np.flatnonzero(np.isin(data.subject, chosen_test) & (data.split == "test"))
    return FederatedDataset(
        name="uci_har",
        clients=clients,
        dev=data.arrays(dev_idx, normalize=normalize),
        test=data.arrays(test_idx, normalize=normalize),
        modalities=[m.model_copy() for m in MODALITIES],
        num_classes=NUM_CLASSES,
        class_names=list(data.class_names),
        dev_indices=dev_idx,
        test_indices=test_idx,
        options={
            "alpha": alpha,
            "shards_per_subject": shards_per_subject,
            "dev_fraction": dev_fraction,
            "min_shard_size": min_shard_size,
            "seed": seed,
            "subjects": chosen,
            "test_subjects": chosen_test,
            "max_clients": max_clients,
            "normalize": normalize,
        },
    )


def _check_subjects(wanted: Sequence[int] | None, pool: list[int], kind: str) -> list[int]:
    if wanted is None:
        return pool
    chosen = sorted({int(s) for s in wanted})
    unknown = [s for s in chosen if s not in pool]
    if unknown:
        raise ValueError(f"{unknown} are not official {kind} subjects (those are {pool})")
    return chosen


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m client_sdk.data uci_har {fetch,info}``."""
    parser = argparse.ArgumentParser(prog="python -m client_sdk.data uci_har", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download the official zip into <data dir>/uci_har")
    fetch.add_argument("--dest", help="target folder (default: $MFCPL_DATASETS_DIR or the cache, + /uci_har)")
    fetch.add_argument("--url", default=OFFICIAL_URL)
    fetch.add_argument("--sha256", help="expected checksum of the download")
    fetch.add_argument("--force", action="store_true", help="download again even if the file exists")
    info = sub.add_parser("info", help="load the dataset and print its counts")
    info.add_argument("--data-dir", help="folder holding uci_har/ (default: $MFCPL_DATASETS_DIR or the cache)")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            path = fetch_uci_har(args.dest, url=args.url, sha256=args.sha256, force=args.force)
            print(path)
        else:
            data = load_uci_har(args.data_dir)
            for split in ("train", "test"):
                mask = data.split == split
                print(
                    f"{split}: {int(mask.sum())} windows, subjects {sorted(set(data.subject[mask].tolist()))}, "
                    f"label counts {np.bincount(data.label[mask], minlength=NUM_CLASSES).tolist()}"
                )
            print(f"segments: {len(np.unique(data.segment))}")
    except (DownloadError, DatasetNotFoundError, UciHarFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0

