"""Feature-file loaders (Hateful Memes / MELD layouts) on small files generated here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from client_sdk.data.features import (
    HATEFUL_MEMES,
    MELD,
    FeatureFormatError,
    FeatureLayout,
    fit_length,
    load_feature_federation,
    load_feature_file,
    save_feature_file,
)
from client_sdk.data.federated import DatasetNotFoundError
from client_sdk.data.missing import simulate_missing
from mfcpl.wire.schemas import ModalityKind

SMALL_MELD = MELD.with_lengths(audio=20, text=6)
SMALL_HM = HATEFUL_MEMES.with_lengths(text=5)


def _meld_tensors(rng: np.random.Generator, n: int, packed: bool) -> dict[str, np.ndarray]:
    """MELD-like: audio [<=30 frames, 80] and token features [<=9, 512], variable lengths."""
    audio_len = rng.integers(5, 31, n)
    text_len = rng.integers(1, 10, n)
    audio_len[0] = 0  # a sample with no audio at all
    audio = rng.normal(size=(int(audio_len.sum()), 80)).astype(np.float32)
    tensors = {"label": rng.integers(0, 4, n), "audio.lengths": audio_len, "text.lengths": text_len}
    if packed:
        tensors["audio"] = audio
        tensors["text"] = rng.normal(size=(int(text_len.sum()), 512)).astype(np.float32)
    else:
        padded_audio = np.zeros((n, 30, 80), np.float32)
        for i, seq in enumerate(np.split(audio, np.cumsum(audio_len)[:-1])):
            padded_audio[i, : len(seq)] = seq
        tensors["audio"] = padded_audio
        tensors["text"] = rng.normal(size=(n, 9, 512)).astype(np.float32)
    return tensors


def test_fit_length_pads_and_truncates() -> None:
    seq = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(fit_length(seq, 2), seq[:2])
    padded = fit_length(seq, 6)
    np.testing.assert_array_equal(padded[:4], seq)
    np.testing.assert_array_equal(padded[4:], 0)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("packed", [True, False])
def test_meld_file_packed_or_padded(tmp_path: Path, suffix: str, packed: bool) -> None:
    rng = np.random.default_rng(1)
    tensors = _meld_tensors(rng, 7, packed)
    path = save_feature_file(tmp_path / f"speaker{suffix}", tensors)
    data = load_feature_file(path, SMALL_MELD)
    assert data.inputs["audio"].shape == (7, 20, 80) and data.inputs["text"].shape == (7, 6, 512)
    assert data.inputs["audio"].dtype == np.float32
    assert data.labels.tolist() == tensors["label"].tolist()
    assert data.present["audio"].tolist() == [False] + [True] * 6  # zero frames = missing
    assert data.present["text"].all()
    # sample 3 by hand: its frames, truncated to 20 or zero-padded
    start = int(tensors["audio.lengths"][:3].sum())
    length = int(tensors["audio.lengths"][3])
    frames = tensors["audio"][start : start + length] if packed else tensors["audio"][3, :length]
    np.testing.assert_array_equal(data.inputs["audio"][3], fit_length(frames, 20))
    text_rows = int(tensors["text.lengths"][3])
    text_start = int(tensors["text.lengths"][:3].sum())
    expected_text = tensors["text"][text_start:][:text_rows] if packed else tensors["text"][3][:text_rows]
    np.testing.assert_array_equal(data.inputs["text"][3], fit_length(expected_text, 6))


def _hm_tensors(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "label": rng.integers(0, 2, n),
        "image": rng.normal(size=(n, 1280)).astype(np.float32),
        "text": rng.normal(size=(n, 8, 512)).astype(np.float32),
        "text.lengths": rng.integers(1, 9, n),
        "image.present": (np.arange(n) % 4 != 1).astype(np.uint8),
    }


def test_hateful_memes_per_client_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    root = tmp_path / "hateful_memes"
    sizes = {"c00": 5, "c01": 3, "c02": 6}
    for name, n in sizes.items():
        save_feature_file(root / "clients" / f"{name}.safetensors", _hm_tensors(rng, n))
    save_feature_file(root / "dev.npz", _hm_tensors(rng, 4))
    test_tensors = _hm_tensors(rng, 9)
    save_feature_file(root / "test.safetensors", test_tensors)

    fed = load_feature_federation(root, SMALL_HM)
    assert fed.client_names == ["c00", "c01", "c02"]
    assert [len(c) for c in fed.clients] == [5, 3, 6]
    assert [(m.name, m.kind, m.shape) for m in fed.modalities] == [
        ("image", ModalityKind.VECTOR, [1280]),
        ("text", ModalityKind.TOKENS, [5, 512]),
    ]
    assert fed.num_classes == 2 and fed.class_names == ["not_hateful", "hateful"]
    assert len(fed.dev) == 4 and len(fed.test) == 9
    # image.present = 0 rows are missing and zero-filled; the stored values are ignored
    assert fed.test.present["image"].tolist() == [i % 4 != 1 for i in range(9)]
    np.testing.assert_array_equal(fed.test.inputs["image"][1], 0)
    np.testing.assert_array_equal(fed.test.inputs["image"][0], test_tensors["image"][0])

    # the layout can also come from layout.json; subsets of clients
    (root / "layout.json").write_text(SMALL_HM.to_json())
    again = load_feature_federation(root, clients=["c02", "c00"])
    assert again.client_names == ["c00", "c02"]
    assert FeatureLayout.from_json(SMALL_HM.to_json()) == SMALL_HM
    assert load_feature_federation(root, "hateful_memes", max_clients=1).modalities[1].shape == [64, 512]
    # and missing-modality simulation works on it like on UCI-HAR
    corrupted, summary = simulate_missing(fed, "sample", 1.0, seed=0)
    assert summary.samples_empty == 0 and summary.samples_complete == 0


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_one_file_layout_with_client_column(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(3)
    root = tmp_path / "meld"
    tensors = _meld_tensors(rng, 12, packed=True)
    tensors["client"] = np.array([2, 0, 0, 2, 1, 1, 1, 0, 2, 2, 0, 1])
    save_feature_file(root / f"train{suffix}", tensors, client_names=["s1_monica", "s1_ross", "s2_rachel"])
    save_feature_file(root / f"test{suffix}", _meld_tensors(rng, 5, packed=False))
    fed = load_feature_federation(root, SMALL_MELD)
    assert fed.client_names == ["s1_monica", "s1_ross", "s2_rachel"]
    monica = fed.client("s1_monica")
    assert monica.indices.tolist() == [1, 2, 7, 10]
    assert monica.data.labels.tolist() == tensors["label"][[1, 2, 7, 10]].tolist()
    assert len(fed.dev) == 0 and len(fed.test) == 5
    assert sum(len(c) for c in fed.clients) == 12


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    good = _hm_tensors(rng, 4)

    def fails(tensors: dict[str, np.ndarray], match: str) -> None:
        path = save_feature_file(tmp_path / "bad.safetensors", tensors)
        with pytest.raises(FeatureFormatError, match=match):
            load_feature_file(path, SMALL_HM)

    fails({k: v for k, v in good.items() if k != "image"}, "missing tensor 'image'")
    fails({**good, "image": good["image"][:, :100]}, r"image: expected \[N=4, 1280\]")
    fails({**good, "label": np.array([0, 1, 2, 0])},
          r"labels must lie in 0..1 .*: 1 of 4 rows are outside, e.g. 2 at row 2")
    fails({**good, "text.lengths": np.array([1, 2, 30, 1])}, "exceed the padded length")
    fails({**good, "image": np.full((4, 1280), np.nan, np.float32)}, "finite")
    fails({**good, "image.present": np.ones(3, np.uint8)}, "image.present must be")
    packed = _meld_tensors(rng, 3, packed=True)
    packed["audio.lengths"] = packed["audio.lengths"] + 1
    path = save_feature_file(tmp_path / "m.safetensors", packed)
    with pytest.raises(FeatureFormatError, match="packed rows"):
        load_feature_file(path, SMALL_MELD)

    obj = tmp_path / "obj.npz"
    np.savez(obj, label=np.array([0]), image=np.array([{"a": 1}], dtype=object))
    with pytest.raises(FeatureFormatError, match="pickle"):
        load_feature_file(obj, SMALL_HM)
    (tmp_path / "x.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(FeatureFormatError, match="unsupported"):
        load_feature_file(tmp_path / "x.pkl", SMALL_HM)
    with pytest.raises(DatasetNotFoundError):
        load_feature_federation(tmp_path / "nowhere", SMALL_HM)
    with pytest.raises(DatasetNotFoundError, match="layout"):
        load_feature_federation(tmp_path, None)
    with pytest.raises(ValueError, match="presets"):
        load_feature_federation(tmp_path, "mnist")


def test_files_written_by_the_safetensors_package_are_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    tensors = _hm_tensors(rng, 3)
    tensors["image.present"] = tensors["image.present"].astype(bool)
    safetensors.numpy.save_file(tensors, str(tmp_path / "hm.safetensors"), metadata={"source": "test"})
    data = load_feature_file(tmp_path / "hm.safetensors", SMALL_HM)
    assert data.present["image"].tolist() == [True, False, True]
    assert json.loads(SMALL_HM.to_json())["modalities"][1]["shape"] == [5, 512]
