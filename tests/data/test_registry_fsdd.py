"""The dataset registry and data-source strings (as the runners use them), and the FSDD+mfeat federation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client_sdk.data.features import MELD, save_feature_file
from client_sdk.data.fsdd import SPEAKERS, audio_features, fsdd_av_federation, log_mel, mel_filterbank
from client_sdk.data.missing import simulate_missing
from client_sdk.data.registry import DataSource, available_datasets, load_client_data, load_federation
from client_sdk.data.uci_har import uci_har_federation
from mfcpl.wire.schemas import ModalityKind


def test_registry_names_and_errors(shared_data_dir: Path) -> None:
    assert available_datasets() == ["fsdd_av", "hateful_memes", "meld", "uci_har"]
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_federation("cifar", shared_data_dir)
    with pytest.raises(ValueError, match="uci_har"):
        load_federation("uci_har", shared_data_dir, colour="red")


def test_uci_har_from_the_registry_with_missing_modalities(shared_data_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("MFCPL_DATASETS_DIR", str(shared_data_dir))  # data_dir=None resolves through the env
    fed = load_federation("uci_har", None, seed=4, subjects=[1, 3], missing_rule="client", missing_q=0.8)
    plain = uci_har_federation(data_dir=shared_data_dir, seed=4, subjects=[1, 3])
    direct, _ = simulate_missing(plain, "client", 0.8, 4)
    assert fed.client_names == direct.client_names == [f"s{s:02d}_k{k}" for s in (1, 3) for k in range(5)]
    for a, b in zip(fed.clients, direct.clients, strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
        assert all(np.array_equal(a.data.present[m], b.data.present[m]) for m in ("acc", "gyro"))
    assert fed.dev.complete.all() and fed.test.complete.all()


def test_data_source_strings() -> None:
    src = DataSource.parse("uci_har:s05_k2?alpha=5.0&seed=3&subjects=5,7&normalize=false")
    assert (src.dataset, src.shard) == ("uci_har", "s05_k2")
    assert src.options == {"alpha": 5.0, "seed": 3, "subjects": [5, 7], "normalize": False}
    assert DataSource.parse(str(src)) == src
    path = DataSource.parse("/data/meld#s1_monica?layout=meld")
    assert (path.path, path.shard, path.options) == ("/data/meld", "s1_monica", {"layout": "meld"})
    with pytest.raises(ValueError, match="unknown dataset"):
        DataSource.parse("cifar:c1")
    with pytest.raises(ValueError, match="give a shard"):
        DataSource.parse("uci_har:")


def test_node_shard_equals_the_simulated_client(shared_data_dir: Path) -> None:
    full, _ = simulate_missing(uci_har_federation(data_dir=shared_data_dir, seed=8), "sample", 0.5, 8)
    shard = load_client_data("uci_har:s17_k3?seed=8&missing_rule=sample&missing_q=0.5", shared_data_dir)
    expected = full.client("s17_k3")
    np.testing.assert_array_equal(shard.indices, expected.indices)
    np.testing.assert_array_equal(shard.data.inputs["gyro"], expected.data.inputs["gyro"])
    np.testing.assert_array_equal(shard.data.present["acc"], expected.data.present["acc"])
    with pytest.raises(KeyError, match="no client 's17_k9'"):
        load_client_data("uci_har:s17_k9", shared_data_dir)


def test_feature_files_as_data_sources(tmp_path: Path) -> None:
    layout = MELD.with_lengths(audio=10, text=4)
    rng = np.random.default_rng(0)

    def tensors(n: int) -> dict[str, np.ndarray]:
        return {
            "label": rng.integers(0, 4, n),
            "audio": rng.normal(size=(n, 12, 80)).astype(np.float32),
            "text": rng.normal(size=(n, 3, 512)).astype(np.float32),
        }

    root = tmp_path / "meld"
    save_feature_file(root / "clients" / "s1_joey.npz", tensors(6))
    save_feature_file(root / "test.npz", tensors(3))
    (root / "layout.json").write_text(layout.to_json())
    from_file = load_client_data(str(root / "clients" / "s1_joey.npz"))
    from_folder = load_client_data(f"{root}#s1_joey?dev_fraction=0")
    assert from_file.name == from_folder.name == "s1_joey"
    assert from_file.data.inputs["audio"].shape == (6, 10, 80)
    np.testing.assert_array_equal(from_file.data.inputs["text"], from_folder.data.inputs["text"])
    # without a dev file the folder's clients give 20% of their samples to dev (6 -> 5 here)
    cut = load_client_data(f"{root}#s1_joey")
    assert len(cut) == 5 and set(cut.indices) < set(range(6))
    np.testing.assert_array_equal(cut.data.inputs["text"], from_file.data.inputs["text"][cut.indices])
    missing = load_client_data(f"{root}#s1_joey?missing_rule=client&missing_q=1.0")
    assert not missing.can_train
    with pytest.raises(FileNotFoundError):
        load_client_data(str(tmp_path / "nothing.npz"))
    # the registry finds <data_dir>/meld with its layout.json, else with the preset (text length 64)
    fed = load_federation("meld", tmp_path, seed=1)
    assert fed.client_names == ["s1_joey"] and fed.test.inputs["text"].shape == (3, 4, 512)
    assert fed.options["seed"] == 1 and fed.options["partition"] == "given"
    (root / "layout.json").unlink()
    fed = load_federation("meld", tmp_path)
    assert fed.client_names == ["s1_joey"] and fed.test.inputs["text"].shape == (3, 64, 512)


def test_log_mel_of_a_tone_peaks_at_its_frequency() -> None:
    t = np.arange(4000) / 8000
    tone = (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    feats = log_mel(tone, n_mels=40)
    assert feats.shape == (1 + (4000 - 200) // 80, 40)
    centres = np.argmax(mel_filterbank(40), axis=1) * 8000 / 256
    assert abs(centres[int(np.argmax(feats.mean(axis=0)))] - 1000) < 120
    fixed = audio_features(tone[:1000], frames=30, n_mels=40)
    assert fixed.shape == (30, 40) and np.all(fixed[11:] == 0) and np.isfinite(fixed).all()


def test_fsdd_av_federation(shared_data_dir: Path) -> None:
    fed = fsdd_av_federation(data_dir=shared_data_dir, speakers=["theo", "george"], frames=50, n_mels=32)
    assert fed.client_names == ["george", "theo"]  # in the dataset's speaker order
    assert [len(c) for c in fed.clients] == [400, 400]
    assert len(fed.dev) == 300 and len(fed.test) == 300
    assert fed.test.class_counts(10) == [30] * 10
    assert [(m.name, m.kind, m.shape) for m in fed.modalities] == [
        ("audio", ModalityKind.TIMESERIES, [50, 32]),
        ("image", ModalityKind.VECTOR, [240]),
    ]
    image = fed.clients[0].data.inputs["image"]
    assert image.shape == (400, 240) and image.min() >= 0 and image.max() <= 1
    assert set(SPEAKERS) >= {c.name for c in fed.clients}
    no_overlap = set(fed.clients[0].indices) & (set(fed.dev_indices) | set(fed.test_indices))
    assert not no_overlap
    with pytest.raises(ValueError, match="unknown speakers"):
        fsdd_av_federation(data_dir=shared_data_dir, speakers=["alice"])
