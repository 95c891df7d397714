"""What one simulated experiment is: dataset, method, missing modality, protocol, and how to run it."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mfcpl.wire.schemas import Algorithm, FederationCreate, ModelSettings, TrainingConfig, upgrade_legacy_settings

MissingMode = Literal["none", "client", "sample"]


class ExperimentConfig(BaseModel):
    """One run. The defaults are the FedMultimodal UCI-HAR protocol of docs/method.md."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "uci_har"
    data_dir: str | None = None
    algorithm: Algorithm = Algorithm.FEDAVG
    missing_rate: float = Field(0.0, ge=0, le=1)
    missing_mode: MissingMode = "client"
    alpha: float = Field(0.1, gt=0, description="Dirichlet label-partition concentration.")
    shards_per_subject: int = Field(5, ge=1, description="UCI-HAR: clients per training subject.")
    max_clients: int | None = Field(None, ge=1, description="Keep only the first N clients (slices, tests).")
    subjects: list[int] | None = Field(None, description="UCI-HAR training subjects to use (default all 21).")
    clients_per_round: int = Field(10, ge=1)
    rounds: int = Field(200, ge=1)
    seed: int = Field(1, ge=0)
    eval_every: int = Field(5, ge=1, description="Evaluate dev and test every N rounds (and at the last).")
    training: dict[str, Any] = Field(default_factory=dict, description="Overrides of TrainingConfig fields.")
    model: dict[str, Any] = Field(default_factory=dict, description="Overrides of ModelSettings fields.")
    tag: str = Field("", description="Free label, part of the run id (e.g. a sweep variant).")

    @model_validator(mode="before")
    @classmethod
    def _typed_settings(cls, data: Any) -> Any:
        """Results written before the settings were typed keep ``training.options``; move it to typed fields."""
        return upgrade_legacy_settings(data)[0] if isinstance(data, dict) else data

    def run_id(self) -> str:
        """A stable, readable id: dataset, missing rule, method, seed, plus a hash of everything else."""
        q = f"q{self.missing_rate:.2f}".replace(".", "")
        mode = self.missing_mode if self.missing_rate > 0 else "none"
        digest = hashlib.sha256(
            json.dumps(self.model_dump(mode="json", exclude={"data_dir"}), sort_keys=True).encode()
        ).hexdigest()[:8]
        parts = [self.dataset, mode, q, str(self.algorithm), f"s{self.seed}", f"r{self.rounds}"]
        if self.tag:
            parts.append(self.tag)
        return "_".join(parts + [digest])

    def training_config(self) -> TrainingConfig:
        return TrainingConfig(**self.training)

    def model_settings(self) -> ModelSettings:
        return ModelSettings(**self.model)


QUICK_PRESET: dict[str, Any] = {
    # Learns within a few minutes on 2 cores (stated as such, not the paper's protocol): each of the 21
    # training subjects is one client with all its windows (about 270), 7 clients per round, 2 local epochs.
    "shards_per_subject": 1,
    "clients_per_round": 7,
    "rounds": 15,
    "eval_every": 1,
    "training": {"local_epochs": 2},
}


def federation_config(cfg: ExperimentConfig, dataset: Any, num_trainable: int) -> FederationCreate:
    """The FederationCreate that the coordinator gets for this experiment."""
    per_round = min(cfg.clients_per_round, num_trainable)
    return FederationCreate(
        name=f"{cfg.run_id()}",
        algorithm=cfg.algorithm,
        num_classes=dataset.num_classes,
        class_names=list(dataset.class_names),
        modalities=list(dataset.modalities),
        model=cfg.model_settings(),
        training=cfg.training_config(),
        rounds=cfg.rounds,
        clients_per_round=per_round,
        quorum=per_round,
        min_clients=num_trainable,
        round_deadline_s=600.0,
        lease_s=86400.0,
        seed=cfg.seed,
    )
