"""typed training settings: training.options of stored federation configs -> typed fields

The free-form ``training.options`` bag is gone from FederationCreate; its keys became typed fields of
``training`` (lambda_proto_ce, pmcmfl_lambda, prototype_source) and ``model`` (prototype_space,
proto_head_scale, finetune_text_encoder). Keys that no trainer ever read were ignored before and are
dropped here (logged).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from alembic import op

from mfcpl.wire.schemas import LEGACY_OPTIONS, upgrade_legacy_settings

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

federations = sa.table("federations", sa.column("id", sa.String), sa.column("config", sa.JSON))


def _rewrite(change: Any) -> None:
    bind = op.get_bind()
    for row in bind.execute(sa.select(federations.c.id, federations.c.config)).all():
        config = row.config
        new = change(row.id, config)
        if new is not config:
            bind.execute(sa.update(federations).where(federations.c.id == row.id).values(config=new))


def upgrade() -> None:
    def change(fid: str, config: dict[str, Any]) -> dict[str, Any]:
        upgraded, dropped = upgrade_legacy_settings(config)
        if dropped:
            log.warning("federation %s: dropped unused training.options %s", fid, sorted(dropped))
        return upgraded

    _rewrite(change)


def downgrade() -> None:
    def change(fid: str, config: dict[str, Any]) -> dict[str, Any]:
        options = {}
        sections = {section: dict(config.get(section) or {}) for section in ("model", "training")}
        for key, (section, field) in LEGACY_OPTIONS.items():
            if field in sections[section]:
                options[key] = sections[section].pop(field)
        if not options and "options" in sections["training"]:
            return config
        return {**config, **sections, "training": {**sections["training"], "options": options}}

    _rewrite(change)
