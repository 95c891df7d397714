"""The wire format: every JSON body that crosses between the coordinator and the SDK.

This module is the single definition of the REST contract (docs/design.md, contract 3). The coordinator
imports it to declare its request/response models; the SDK imports it to build requests and parse
responses. It depends on pydantic only, never on FastAPI, SQLAlchemy or torch.

Tensors never travel as JSON: model weights, updates and prototype sets are safetensors bodies whose
layout is defined in :mod:`mfcpl.wire.tensors`.

REST surface (prefix ``/v1``; ``{fid}`` a federation id, ``{r}`` a round number, ``{v}`` a model
version number or ``latest``). Auth: ``Authorization: Bearer <token>``; "admin" is the operator
token, "client" a client token scoped to one federation.

| method | path | auth | body -> response |
|---|---|---|---|
| POST | /federations | admin | FederationCreate -> Federation (201) |
| GET | /federations | admin | -> list[Federation] |
| GET | /federations/{fid} | admin or client | -> Federation |
| POST | /federations/{fid}/pause, /resume, /cancel | admin | -> Federation |
| POST | /federations/{fid}/clients | admin | ClientEnroll -> ClientEnrolled (201, token shown once) |
| GET | /federations/{fid}/clients | admin | -> list[Client] |
| DELETE | /federations/{fid}/clients/{cid} | admin | -> Client (revoked) |
| GET | /federations/{fid}/clients/me | client | -> Client |
| PUT | /federations/{fid}/clients/me/profile | client | ClientProfile -> Client |
| GET | /federations/{fid}/tasks/next | client | -> Task (also renews the client's lease) |
| GET | /federations/{fid}/rounds | admin or client | -> list[Round] |
| GET | /federations/{fid}/rounds/{r} | admin or client | -> Round |
| POST | /federations/{fid}/models | admin | safetensors weights -> ModelVersion (201; only version 0) |
| GET | /federations/{fid}/models | admin or client | -> list[ModelVersion] |
| GET | /federations/{fid}/models/{v} | admin or client | -> ModelVersion |
| GET | /federations/{fid}/models/{v}/weights | admin or client | -> safetensors (ETag, 304) |
| GET | /federations/{fid}/prototypes/{v} | admin or client | -> PrototypeSet (JSON summary) |
| GET | /federations/{fid}/prototypes/{v}/tensors | admin or client | -> safetensors (ETag, 304) |
| POST | /federations/{fid}/rounds/{r}/updates | client | safetensors update -> UpdateReceipt (201, 200 on replay) |
| GET | /federations/{fid}/rounds/{r}/updates | admin | -> list[UpdateReceipt] |
| POST | /federations/{fid}/rounds/{r}/evaluations | admin | EvaluationCreate -> Evaluation (201) |
| GET | /federations/{fid}/metrics | admin or client | -> list[RoundMetrics] |
| GET | /federations/{fid}/events | admin or client | -> text/event-stream of Event |

Errors are ``application/problem+json`` bodies (:class:`Problem`) with a stable ``code``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Algorithm(StrEnum):
    MFCPL = "mfcpl"
    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDOPT = "fedopt"
    FEDPROTO = "fedproto"
    PMCMFL = "pmcmfl"


class ModalityKind(StrEnum):
    TIMESERIES = "timeseries"  # [T, C] sensor or filterbank frames -> Conv1d + GRU
    VECTOR = "vector"  # [D] pre-extracted features -> MLP
    TOKENS = "tokens"  # [L, D] token features -> GRU
    TEXT = "text"  # [L] token ids -> transformers encoder from a local checkpoint


class ModalitySpec(_Model):
    name: Identifier = Field(description="Modality name, e.g. `acc`, `gyro`, `image`, `text`.")
    kind: ModalityKind
    shape: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(
        min_length=1, max_length=3, description="Per-sample input shape, e.g. [128, 3] for a 3-axis window."
    )


class ModelSettings(_Model):
    hidden_dim: int = Field(128, ge=1, le=4096, description="d: encoder output width.")
    proj_dim: int = Field(128, ge=1, le=4096, description="d_p: width of the projection heads g1, g2.")
    attention_heads: int = Field(6, ge=1, le=64)
    attention_dim: int = Field(512, ge=1, le=8192)
    classifier_hidden: int = Field(64, ge=1, le=8192)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    shared_modality_head: bool = Field(
        False, description="One g2 shared by every modality instead of one per modality."
    )
    conv_init: Literal["kaiming", "default"] = Field(
        "kaiming",
        description="Conv1d weights of timeseries encoders: Kaiming-normal (fan-in, ReLU) with zero bias, or "
        "PyTorch's default. With the default the signal fades through the three conv blocks and the GRU, and "
        "training sits at one predicted class for tens of rounds (docs/algorithm.md).",
    )
    text_encoder_path: str | None = Field(
        None, description="Local path of a transformers checkpoint, for `text` modalities."
    )


class TrainingConfig(_Model):
    """Local-training and aggregation hyper-parameters (docs/method.md); every (R) choice is a field."""

    local_epochs: int = Field(1, ge=1, le=1000)
    batch_size: int = Field(16, ge=1, le=65536)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-5, ge=0)
    grad_clip: float | None = Field(10.0, gt=0)
    prox_mu: float = Field(0.01, ge=0, description="FedProx proximal weight.")
    server_lr: float = Field(0.025, gt=0, description="FedOpt global learning rate.")
    server_momentum: float = Field(0.9, ge=0, lt=1, description="FedOpt server momentum.")
    lambda_cmpr: float = Field(1.0, ge=0)
    lambda_cmpc: float = Field(1.0, ge=0)
    lambda_cma: float = Field(1.0, ge=0)
    tau: float = Field(0.5, gt=0, description="CMPC temperature.")
    cma_distance: Literal["l2", "l1", "smooth_l1"] = "l2"
    cmpc_target: Literal["shared", "modality"] = Field(
        "shared", description="Contrast u^m against the complete prototypes P^k or the other modality's P^{n,k}."
    )
    prototype_weighting: Literal["count", "mean"] = Field(
        "count", description="Complete prototypes as count-weighted or plain mean over clients."
    )
    fedproto_lambda: float = Field(1.0, ge=0)
    options: dict[str, float | int | str | bool] = Field(
        default_factory=dict, description="Further algorithm settings, passed through to the trainer."
    )


class FederationStatus(StrEnum):
    WAITING = "waiting"  # no model version 0 yet, or not enough live clients for the first round
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class FederationCreate(_Model):
    name: str = Field(min_length=1, max_length=200)
    algorithm: Algorithm = Algorithm.MFCPL
    num_classes: int = Field(ge=2, le=100_000)
    class_names: list[str] | None = None
    modalities: list[ModalitySpec] = Field(min_length=1, max_length=16)
    model: ModelSettings = Field(default_factory=ModelSettings)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    rounds: int = Field(200, ge=1, le=1_000_000)
    clients_per_round: int = Field(10, ge=1, le=100_000)
    quorum: int | None = Field(
        None, ge=1, description="Updates needed to close a round at its deadline (default: clients_per_round)."
    )
    min_clients: int | None = Field(
        None, ge=1, description="Live clients needed before a round opens (default: clients_per_round)."
    )
    round_deadline_s: float | None = Field(None, gt=0, le=7 * 86400, description="Default from settings.")
    lease_s: float = Field(60.0, gt=0, le=86400, description="A client is live this long after its last poll.")
    seed: int = Field(0, ge=0, lt=2**63)

    @model_validator(mode="after")
    def _check(self) -> FederationCreate:
        names = [m.name for m in self.modalities]
        if len(set(names)) != len(names):
            raise ValueError("modality names must be unique")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError("class_names must have num_classes entries")
        if self.quorum is not None and self.quorum > self.clients_per_round:
            raise ValueError("quorum cannot exceed clients_per_round")
        return self


class Federation(BaseModel):
    id: str
    status: FederationStatus
    config: FederationCreate
    current_round: int | None = Field(None, description="Number of the round in progress or last closed.")
    latest_model_version: int | None = None
    created_at: datetime
    updated_at: datetime


class ClientEnroll(_Model):
    name: str = Field(min_length=1, max_length=200)


class Client(BaseModel):
    id: str
    federation_id: str
    name: str
    revoked: bool
    modalities: list[str] | None = None
    class_counts: list[int] | None = None
    num_samples: int | None = None
    last_seen_at: datetime | None = None
    lease_expires_at: datetime | None = None
    created_at: datetime


class ClientEnrolled(Client):
    token: str = Field(description="Bearer token for this client. Shown once; stored only as a hash.")


class ClientProfile(_Model):
    modalities: list[Identifier] = Field(max_length=64, description="Modalities this client holds (may be empty).")
    class_counts: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
        max_length=100_000, description="Training samples per class."
    )
    num_samples: int = Field(ge=0, le=2**31 - 1)


class TaskAction(StrEnum):
    TRAIN = "train"
    WAIT = "wait"
    DONE = "done"


class Task(BaseModel):
    action: TaskAction
    federation_id: str
    round: int | None = None
    model_version: int | None = None
    model_sha256: str | None = None
    prototype_version: int | None = Field(None, description="None when no complete prototypes exist yet.")
    prototype_sha256: str | None = None
    deadline: datetime | None = None
    seed: int | None = Field(None, description="Seed for this client's local training in this round.")
    retry_after_s: float | None = None
    algorithm: Algorithm | None = None
    training: TrainingConfig | None = None
    reason: str | None = None


class RoundState(StrEnum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"


class Round(BaseModel):
    federation_id: str
    number: int
    state: RoundState
    seed: int
    participants: list[str]
    received: int
    quorum: int
    input_model_version: int
    output_model_version: int | None = None
    prototype_version: int | None = None
    deadline: datetime
    opened_at: datetime
    closed_at: datetime | None = None
    failure_reason: str | None = None
    train_metrics: dict[str, float] = Field(
        default_factory=dict, description="Sample-weighted mean of the metrics clients reported."
    )


class ModelVersion(BaseModel):
    federation_id: str
    version: int
    sha256: str
    size_bytes: int
    round: int | None = Field(None, description="Round that produced it; None for the initial version 0.")
    created_at: datetime


class PrototypeLevel(BaseModel):
    name: str = Field(description="`shared` (fused, complete samples) or a modality name.")
    dim: int
    coverage: list[bool] = Field(description="Per class: whether a prototype exists.")
    counts: list[float] = Field(description="Per class: samples behind the prototype (summed over clients).")


class PrototypeSet(BaseModel):
    federation_id: str
    version: int = Field(description="Model version these prototypes belong to.")
    sha256: str
    levels: list[PrototypeLevel]
    created_at: datetime


class UpdateReceipt(BaseModel):
    id: str
    federation_id: str
    round: int
    client_id: str
    num_samples: int
    sha256: str
    size_bytes: int
    received_at: datetime
    replayed: bool = Field(False, description="True when this answers a repeat of an accepted update.")


class EvaluationCreate(_Model):
    split: Identifier = Field(description="e.g. `dev` or `test`.")
    metrics: dict[str, float]
    model_version: int | None = None


class Evaluation(BaseModel):
    federation_id: str
    round: int
    split: str
    metrics: dict[str, float]
    model_version: int | None
    created_at: datetime


class RoundMetrics(BaseModel):
    round: int
    state: RoundState
    participants: int
    received: int
    train: dict[str, float]
    evaluations: dict[str, dict[str, float]]
    opened_at: datetime
    closed_at: datetime | None
    aggregation_s: float | None = None


class EventType(StrEnum):
    ROUND_OPENED = "round.opened"
    ROUND_CLOSED = "round.closed"
    ROUND_FAILED = "round.failed"
    UPDATE_RECEIVED = "update.received"
    FEDERATION_STATUS = "federation.status"


class Event(BaseModel):
    id: int
    federation_id: str
    type: EventType
    round: int | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class Problem(BaseModel):
    """RFC 9457 problem details, with a stable machine-readable ``code``."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None
