"""Typed settings: the stored-config migration (SQLite and Postgres), refusal of unknown keys over HTTP, and the
legacy experiment configs that older results hold."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from alembic import command
from sqlalchemy import text

from coordinator.db.engine import make_engine
from coordinator.db.migrate import alembic_config, upgrade
from mfcpl.experiments.config import ExperimentConfig
from mfcpl.wire.schemas import FederationCreate
from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import federation_config

LEGACY_TRAINING = {"lr": 0.01, "lambda_cmpr": 0.5, "options": {
    "prototype_space": "normalized", "lambda_proto_ce": 1.0, "prototype_source": "all", "pmcmfl_lambda": 2.0,
    "proto_head_scale": 5.0, "finetune_text_encoder": True, "prototype_spce": "typo, never read"}}


def _legacy_config() -> dict[str, Any]:
    config = json.loads(FederationCreate.model_validate(federation_config()).model_dump_json())
    for field in ("prototype_space", "proto_head_scale", "finetune_text_encoder"):
        del config["model"][field]
    config["training"] = LEGACY_TRAINING
    return config


def test_stored_legacy_configs_are_migrated_into_typed_fields(database_url: str) -> None:
    engine = make_engine(database_url)
    now = datetime.now(UTC)
    try:
        with engine.connect() as conn:
            command.upgrade(alembic_config(conn), "0001")
            conn.commit()
            for fid, config in (("fed_legacy", _legacy_config()), ("fed_empty", {**_legacy_config(), "training": {
                    "options": {}}})):
                conn.execute(text("INSERT INTO federations (id, name, status, config, seed, event_seq, created_at, "
                                  "updated_at) VALUES (:id, 'f', 'waiting', :config, 0, 0, :now, :now)"),
                             {"id": fid, "config": json.dumps(config), "now": now})
            conn.commit()
        upgrade(engine)
        with engine.connect() as conn:
            stored = {r.id: r.config for r in conn.execute(text("SELECT id, config FROM federations"))}
    finally:
        engine.dispose()
    migrated = {fid: FederationCreate.model_validate(c if isinstance(c, dict) else json.loads(c))
                for fid, c in stored.items()}
    legacy = migrated["fed_legacy"]
    assert legacy.model.prototype_space == "normalized"
    assert legacy.model.proto_head_scale == 5.0 and legacy.model.finetune_text_encoder is True
    assert legacy.training.lambda_proto_ce == 1.0 and legacy.training.prototype_source == "all"
    assert legacy.training.pmcmfl_lambda == 2.0
    assert legacy.training.lr == 0.01 and legacy.training.lambda_cmpr == 0.5
    assert migrated["fed_empty"].training == FederationCreate.model_validate(federation_config()).training


def test_unknown_or_misspelt_settings_are_refused_at_create(coordinator: CoordinatorProcess) -> None:
    for section, bad in (("training", {"options": {"prototype_space": "penultimate"}}),
                         ("training", {"prototype_spce": "projection"}),
                         ("model", {"prototype_space": "spherical"})):
        body = federation_config()
        body[section] = bad
        with coordinator.client() as admin:
            response = admin.post("/v1/federations", json=body)
        assert response.status_code == 422, (section, bad, response.text)
        problem = response.json()
        assert problem["code"] == "validation_error"
        assert any(section in ".".join(map(str, e.get("loc", []))) for e in problem["errors"]), problem


def test_experiment_configs_of_older_results_still_load() -> None:
    legacy = ExperimentConfig.model_validate({"algorithm": "mfcpl", "training": LEGACY_TRAINING})
    assert legacy.model["prototype_space"] == "normalized"
    assert "options" not in legacy.training and legacy.training["prototype_source"] == "all"
    assert legacy.training_config().lambda_proto_ce == 1.0
    assert legacy.model_settings().prototype_space == "normalized"


