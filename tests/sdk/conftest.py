"""Shared fixtures for the SDK tests: federation configs and small real UCI-HAR slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client_sdk.data import MultimodalArrays
from mfcpl.wire.schemas import FederationCreate, ModalitySpec

UCI_HAR_NPZ = Path(__file__).resolve().parents[3] / "shared" / "data" / "uci_har" / "uci_har.npz"


def har_config(
    algorithm: str = "mfcpl", model: dict[str, object] | None = None, **training: object
) -> FederationCreate:
    return FederationCreate.model_validate(
        {
            "name": "har",
            "algorithm": algorithm,
            "num_classes": 6,
            "modalities": [
                {"name": "acc", "kind": "timeseries", "shape": [128, 3]},
                {"name": "gyro", "kind": "timeseries", "shape": [128, 3]},
            ],
            "model": model or {},
            "training": training,
        }
    )


def znorm(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-5)).astype(np.float32)


def load_har_slice(n: int, seed: int, split: str = "train") -> MultimodalArrays:
    """``n`` random windows of one split of the real UCI-HAR npz, z-normalised per window and channel."""
    with np.load(UCI_HAR_NPZ) as npz:
        rows = np.flatnonzero(npz["split"] == split)
        pick = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
        acc, gyro, labels = npz["acc"][pick], npz["gyro"][pick], npz["label"][pick]
    return MultimodalArrays(
        inputs={"acc": znorm(acc), "gyro": znorm(gyro)},
        present={"acc": np.ones(n, bool), "gyro": np.ones(n, bool)},
        labels=labels.astype(np.int64),
    )


@pytest.fixture(scope="session")
def har_train() -> MultimodalArrays:
    return load_har_slice(192, seed=3)


@pytest.fixture(scope="session")
def har_test() -> MultimodalArrays:
    return load_har_slice(256, seed=4, split="test")


__all__ = ["ModalitySpec", "har_config", "load_har_slice"]
