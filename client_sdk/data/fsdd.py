"""FSDD spoken digits paired with mfeat handwritten digits: a small two-modality (audio + image) federation.

Source: ``<data_dir>/fsdd_mfeat_av/fsdd_mfeat_av.npz`` (see its README: the pairing is synthetic, by digit).

* audio: log-mel frames computed here in numpy (25 ms Hann window, 10 ms hop, 256-point FFT, ``n_mels``
  triangular mel filters up to 4 kHz, ``log(power + 1e-6)``), z-normalised per clip and mel bin over the
  clip's frames, then truncated / zero-padded to ``frames`` -> timeseries ``[frames, n_mels]``;
* image: the paired 16x15 mfeat ``pix`` image (values 0..6) divided by 6 and flattened -> vector ``[240]``;
* clients: the 6 speakers (natural clients), each with its train takes ``>= dev_takes``; the pooled dev set is
  every speaker's train takes ``5 .. dev_takes-1``; test: the official FSDD test takes 0..4.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from client_sdk.data.arrays import MultimodalArrays
from client_sdk.data.features import LAYOUT_FILE, FeatureLayout, save_feature_file
from client_sdk.data.federated import ClientShard, DatasetNotFoundError, FederatedDataset, default_data_dir
from mfcpl.wire.schemas import ModalityKind, ModalitySpec

DATASET_DIR = "fsdd_mfeat_av"
NPZ_NAME = "fsdd_mfeat_av.npz"
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
CLASS_NAMES = [str(d) for d in range(10)]
IMAGE_SHAPE = (16, 15)
WIN, HOP, NFFT = 200, 80, 256  # 25 ms / 10 ms at 8 kHz


@dataclass
class FsddAv:
    audio: list[np.ndarray]  # per clip int16 waveform
    sample_rate: int
    label: np.ndarray
    speaker: np.ndarray
    take: np.ndarray
    split: np.ndarray
    image: np.ndarray  # [N, 16, 15] uint8, the image paired with each clip


def load_fsdd_av(data_dir: str | os.PathLike[str] | None = None) -> FsddAv:
    path = default_data_dir(data_dir) / DATASET_DIR / NPZ_NAME
    if not path.is_file():
        raise DatasetNotFoundError(f"no FSDD+mfeat npz at {path}")
    with np.load(path, allow_pickle=False) as f:
        offsets = f["audio_offsets"]
        audio = f["audio"]
        images = f["image"][f["pair_image"]]
        return FsddAv(
            audio=[audio[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)],
            sample_rate=int(f["sample_rate"]),
            label=f["label"].astype(np.int64),
            speaker=f["speaker"].astype(str),
            take=f["take"].astype(np.int64),
            split=f["split"].astype(str),
            image=images,
        )


@lru_cache(maxsize=8)
def mel_filterbank(n_mels: int, sample_rate: int = 8000, n_fft: int = NFFT) -> np.ndarray:
    """[n_mels, n_fft//2+1] triangular filters evenly spaced on the HTK mel scale from 0 Hz to Nyquist."""

    def to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def to_hz(mel: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    edges = to_hz(np.linspace(0.0, to_mel(np.array(sample_rate / 2)), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float64)


def log_mel(wave: np.ndarray, n_mels: int = 40, sample_rate: int = 8000) -> np.ndarray:
    """[frames, n_mels] float32 log-mel energies of a mono waveform (short clips are zero-padded to a window)."""
    x = np.asarray(wave, dtype=np.float64) / 32768.0
    if len(x) < WIN:
        x = np.pad(x, (0, WIN - len(x)))
    n_frames = 1 + (len(x) - WIN) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(x, WIN)[::HOP][:n_frames] * np.hanning(WIN)
    power = np.abs(np.fft.rfft(frames, n=NFFT, axis=1)) ** 2
    return np.log(power @ mel_filterbank(n_mels, sample_rate).T + 1e-6).astype(np.float32)


def audio_features(wave: np.ndarray, frames: int, n_mels: int, sample_rate: int = 8000) -> np.ndarray:
    """Per-clip z-normalised log-mel, truncated / zero-padded to ``frames``."""
    feats = log_mel(wave, n_mels, sample_rate)
    feats = (feats - feats.mean(axis=0)) / (feats.std(axis=0) + 1e-5)
    out = np.zeros((frames, n_mels), dtype=np.float32)
    out[: min(frames, len(feats))] = feats[:frames]
    return out


def _arrays(data: FsddAv, idx: np.ndarray, frames: int, n_mels: int) -> MultimodalArrays:
    audio = np.zeros((len(idx), frames, n_mels), np.float32)
    for row, i in enumerate(idx):
        audio[row] = audio_features(data.audio[i], frames, n_mels, data.sample_rate)
    image = (data.image[idx].reshape(len(idx), -1) / 6.0).astype(np.float32)
    present = {m: np.ones(len(idx), dtype=bool) for m in ("audio", "image")}
    return MultimodalArrays({"audio": audio, "image": image}, present, data.label[idx])


def fsdd_av_federation(
    data: FsddAv | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    frames: int = 80,
    n_mels: int = 40,
    dev_takes: int = 10,
    speakers: Sequence[str] | None = None,
    max_clients: int | None = None,
) -> FederatedDataset:
    """Six speaker clients (train takes >= ``dev_takes``), dev = train takes below it, test = takes 0..4."""
    if not 5 <= dev_takes < 50:
        raise ValueError("dev_takes must lie in 5..49 (train takes are 5..49; 5 means no dev set)")
    if data is None:
        data = load_fsdd_av(data_dir)
    chosen = list(SPEAKERS) if speakers is None else [str(s) for s in speakers]
    unknown = set(chosen) - set(SPEAKERS)
    if unknown:
        raise ValueError(f"unknown speakers {sorted(unknown)} (the speakers are {list(SPEAKERS)})")
    chosen = [s for s in SPEAKERS if s in chosen]
    if max_clients is not None:
        chosen = chosen[:max_clients]
    train = data.split == "train"
    clients = []
    for speaker in chosen:
        idx = np.flatnonzero(train & (data.speaker == speaker) & (data.take >= dev_takes))
        clients.append(ClientShard(name=speaker, data=_arrays(data, idx, frames, n_mels), indices=idx, subject=speaker))
    dev_idx = np.flatnonzero(train & (data.take < dev_takes))
    test_idx = np.flatnonzero(data.split == "test")
    return FederatedDataset(
        name="fsdd_av",
        clients=clients,
        dev=_arrays(data, dev_idx, frames, n_mels),
        test=_arrays(data, test_idx, frames, n_mels),
        modalities=[
            ModalitySpec(name="audio", kind=ModalityKind.TIMESERIES, shape=[frames, n_mels]),
            ModalitySpec(name="image", kind=ModalityKind.VECTOR, shape=[IMAGE_SHAPE[0] * IMAGE_SHAPE[1]]),
        ],
        num_classes=10,
        class_names=list(CLASS_NAMES),
        dev_indices=dev_idx,
        test_indices=test_idx,
        options={"frames": frames, "n_mels": n_mels, "dev_takes": dev_takes, "speakers": chosen,
                 "max_clients": max_clients},
    )


# ---------------------------------------------------------------------------------------------- export


def _export_tensors(arrays: MultimodalArrays) -> dict[str, np.ndarray]:
    return {"label": arrays.labels, "audio": arrays.inputs["audio"], "image": arrays.inputs["image"]}


def export_fsdd_av(
    dest: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    fmt: str = "safetensors",
    frames: int = 80,
    n_mels: int = 40,
) -> Path:
    """Write the ``fsdd_av`` features (as :func:`fsdd_av_federation` computes them) in the POOLED folder layout.

    ``<dest>/layout.json``; ``train`` = every speaker's client takes (speaker after speaker, in
    :data:`SPEAKERS` order) with a ``group`` column (the speaker's index) and ``group_names`` = the speakers;
    ``dev`` = train takes 5..9; ``test`` = takes 0..4. ``load_federation(dest, partition="group")`` then gives
    the clients and samples of ``load_federation("fsdd_av")``.
    """
    if fmt not in ("safetensors", "npz"):
        raise ValueError(f"format must be safetensors or npz, got {fmt!r}")
    federation = fsdd_av_federation(data_dir=data_dir, frames=frames, n_mels=n_mels)
    root = Path(dest).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    layout = FeatureLayout("fsdd_av", tuple(federation.modalities), federation.num_classes, tuple(CLASS_NAMES))
    (root / LAYOUT_FILE).write_text(layout.to_json())
    clients = federation.clients
    train = {
        name: np.concatenate([_export_tensors(c.data)[name] for c in clients]) for name in ("label", "audio", "image")
    }
    train["group"] = np.concatenate([np.full(len(c), SPEAKERS.index(c.name), dtype=np.int64) for c in clients])
    save_feature_file(root / f"train.{fmt}", train, group_names=list(SPEAKERS))
    save_feature_file(root / f"dev.{fmt}", _export_tensors(federation.dev))
    save_feature_file(root / f"test.{fmt}", _export_tensors(federation.test))
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m client_sdk.data fsdd_av export DIR [--data-dir D] [--format safetensors|npz]``."""
    parser = argparse.ArgumentParser(prog="python -m client_sdk.data fsdd_av", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write the features as a pooled data set folder (load it by path)")
    export.add_argument("dest", help="folder to write (created if needed)")
    export.add_argument("--data-dir", help="folder holding fsdd_mfeat_av/ (default: $MFCPL_DATASETS_DIR or the cache)")
    export.add_argument("--format", default="safetensors", choices=["safetensors", "npz"])
    args = parser.parse_args(argv)
    try:
        root = export_fsdd_av(args.dest, args.data_dir, fmt=args.format)
    except DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(root)
    return 0
