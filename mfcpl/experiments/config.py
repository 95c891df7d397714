"""What one simulated experiment is: dataset, method, missing modality, protocol, and how to run it."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mfcpl.wire.schemas import (
    Algorithm,
    FederationCreate,
    ModelSettings,
    Normalization,
    TrainingConfig,
    upgrade_legacy_settings,
)

MissingMode = Literal["none", "client", "sample", "client_varied"]
Partition = Literal["given", "iid", "dirichlet", "group"]
NormalizationChoice = Literal["auto", "federated", "client", "none"]
PRESTANDARDISED_DATASETS = frozenset({"uci_har"})  # their loaders already z-normalise every window
# Run ids hash these as they were spelt before None meant "the data set's default"
_HISTORICAL_DEFAULTS: dict[str, Any] = {"alpha": 0.1, "shards_per_subject": 5}
_LATER_FIELDS: dict[str, Any] = {"partition": None, "num_clients": None, "dev_fraction": None, "normalization": "auto"}


class ExperimentConfig(BaseModel):
    """One run. The defaults are the FedMultimodal UCI-HAR protocol of docs/method.md."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "uci_har"
    data_dir: str | None = None
    algorithm: Algorithm = Algorithm.FEDAVG
    missing_rate: float = Field(0.0, ge=0, le=1)
    missing_mode: MissingMode = "client"
    alpha: float | None = Field(
        None, gt=0, description="Dirichlet label-partition concentration (uci_har: default 0.1; elsewhere only "
        "with partition dirichlet).")
    shards_per_subject: int | None = Field(None, ge=1, description="UCI-HAR only: clients per training subject "
                                           "(default 5).")
    max_clients: int | None = Field(None, ge=1, description="Keep only the first N clients (slices, tests).")
    subjects: list[int] | None = Field(None, description="UCI-HAR training subjects to use (default all 21).")
    partition: Partition | None = Field(
        None, description="How training data becomes clients (not uci_har): given (the files' own clients), iid, "
        "dirichlet (with alpha), group (one client per group id). Default: given for data split into clients, "
        "group for a pooled train file with a group column, else iid.")
    num_clients: int | None = Field(None, ge=1, description="Clients made by partition iid or dirichlet.")
    dev_fraction: float | None = Field(
        None, gt=0, lt=1, description="Share of the training data cut as the dev set when there is no dev file.")
    normalization: NormalizationChoice = Field(
        "auto", description="Feature standardisation: federated (statistics of every client's training data), "
        "client (each client its own), none; auto = none for uci_har (its loader z-normalises every window), "
        "federated for every other data set.")
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

    def _digest_view(self) -> dict[str, Any]:
        """The fields the run id hashes, spelt as before the data-set options existed, so that earlier results
        keep their ids (and a sweep skips them as done)."""
        data = self.model_dump(mode="json", exclude={"data_dir"})
        for key, default in _HISTORICAL_DEFAULTS.items():
            if data[key] is None:
                data[key] = default
        for key, default in _LATER_FIELDS.items():
            if data[key] == default:
                del data[key]
        return data

    @property
    def dataset_label(self) -> str:
        """The data set's name in run ids: a registered name, or a folder's name for a data set given by path."""
        if not self.is_path_dataset:
            return self.dataset
        name = re.sub(r"[^a-z0-9_]+", "_", Path(self.dataset.rstrip("/\\")).name.lower()).strip("_")
        return name or "dataset"

    @property
    def is_path_dataset(self) -> bool:
        return any(c in self.dataset for c in "/\\") or self.dataset.startswith((".", "~"))

    def resolved_normalization(self) -> str:
        """The normalization mode this run applies (``auto`` resolved for its data set)."""
        if self.normalization != "auto":
            return self.normalization
        return "none" if self.dataset in PRESTANDARDISED_DATASETS else "federated"

    def run_id(self) -> str:
        """A stable, readable id: dataset, missing rule, method, seed, plus a hash of everything else."""
        q = f"q{self.missing_rate:.2f}".replace(".", "")
        mode = self.missing_mode if self.missing_rate > 0 else "none"
        digest = hashlib.sha256(json.dumps(self._digest_view(), sort_keys=True).encode()).hexdigest()[:8]
        parts = [self.dataset_label, mode, q, str(self.algorithm), f"s{self.seed}", f"r{self.rounds}"]
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


def federation_config(cfg: ExperimentConfig, dataset: Any, num_trainable: int,
                      normalization: Normalization | None = None) -> FederationCreate:
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
        normalization=normalization if normalization is not None else Normalization(),
    )
