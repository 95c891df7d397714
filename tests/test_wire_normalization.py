"""The federation config's ``normalization``: statistics checked against the modalities, and the learning rate a
federation on standardised features gets when it sets none."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mfcpl.wire.schemas import STANDARDISED_LR, FederationCreate, TrainingConfig

MODALITIES = [{"name": "a", "kind": "vector", "shape": [3]}, {"name": "t", "kind": "text", "shape": [8]}]
STATS = {"a": {"mean": [0.0, 1.0, 2.0], "std": [1.0, 2.0, 3.0], "count": 10.0}}


def _create(**extra: object) -> FederationCreate:
    return FederationCreate.model_validate({"name": "x", "num_classes": 2, "modalities": MODALITIES, **extra})


def test_statistics_must_fit_the_modalities() -> None:
    assert _create(normalization={"mode": "federated", "stats": STATS}).normalization.stats is not None
    for normalization, message in (
        ({"mode": "federated"}, "federated normalization needs stats"),
        ({"mode": "client", "stats": STATS}, "only used with mode federated"),
        ({"mode": "federated", "stats": {"b": STATS["a"]}}, "no modality 'b'"),
        ({"mode": "federated", "stats": {"t": {"mean": [0.0] * 8, "std": [1.0] * 8}}}, "never normalised"),
        ({"mode": "federated", "stats": {"a": {"mean": [0.0, 1.0], "std": [1.0, 1.0]}}}, "feature width of 3"),
        ({"mode": "federated", "stats": {"a": {"mean": [0.0] * 3, "std": [1.0, 0.0, 1.0]}}}, "greater than 0"),
        ({"mode": "federated", "stats": {"a": {"mean": [0.0, float("nan"), 0.0], "std": [1.0] * 3}}}, "finite"),
    ):
        with pytest.raises(ValidationError, match=message):
            _create(normalization=normalization)


def test_standardised_features_get_the_safe_learning_rate_unless_one_is_set() -> None:
    assert TrainingConfig().lr == 0.05
    assert _create().training.lr == 0.05  # raw features: the UCI-HAR protocol's value
    for normalization in ({"mode": "federated", "stats": STATS}, {"mode": "client"}):
        chosen = _create(normalization=normalization)
        assert chosen.training.lr == STANDARDISED_LR == 0.01
        assert FederationCreate.model_validate_json(chosen.model_dump_json()).training.lr == 0.01  # stored as is
        assert _create(normalization=normalization, training={"lr": 0.05}).training.lr == 0.05
        assert _create(normalization=normalization, training={"batch_size": 8}).training.lr == 0.01
