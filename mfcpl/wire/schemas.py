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

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator

from mfcpl.wire.constants import MAX_METRIC_KEY_LENGTH, MAX_METRICS, has_control_characters


def _strict_int(value: Any) -> Any:
    # JSON true/false, 1.0 and "1" are not integers; numpy integers (which have __index__) are.
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise ValueError("must be an integer (not a boolean, float or string)")
    return value


def _strict_float(value: Any) -> Any:
    if isinstance(value, bool | str | bytes):
        raise ValueError("must be a number (not a boolean or string)")
    return value


def _printable(value: str) -> str:
    if has_control_characters(value):
        raise ValueError("must not contain NUL or control characters")
    return value


StrictInt = Annotated[int, BeforeValidator(_strict_int)]
"""An integer of a request body: booleans, floats and numeric strings are refused (422)."""
StrictFloat = Annotated[float, BeforeValidator(_strict_float)]
"""A number of a request body: integers are accepted, booleans and strings refused (422)."""
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_printable)]
"""A federation or client name: 1-200 characters, no NUL or control characters."""
ClassName = Annotated[str, Field(max_length=200), AfterValidator(_printable)]
MetricKey = Annotated[str, Field(min_length=1, max_length=MAX_METRIC_KEY_LENGTH), AfterValidator(_printable)]
"""A metric name: 1-128 characters, no NUL or control characters."""

Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
PrototypeSpace = Literal["normalized", "projection", "penultimate"]
PrototypeSource = Literal["complete", "all"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Algorithm(StrEnum):
    MFCPL = "mfcpl"
    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDOPT = "fedopt"
    FEDPROTO = "fedproto"
    PMCMFL = "pmcmfl"
    FEDNOVA = "fednova"
    FLISM = "flism"


class ModalityKind(StrEnum):
    TIMESERIES = "timeseries"  # [T, C] sensor or filterbank frames -> Conv1d + GRU
    VECTOR = "vector"  # [D] pre-extracted features -> MLP
    TOKENS = "tokens"  # [L, D] token features -> GRU
    TEXT = "text"  # [L] token ids -> transformers encoder from a local checkpoint


class ModalitySpec(_Model):
    name: Identifier = Field(description="Modality name, e.g. `acc`, `gyro`, `image`, `text`.")
    kind: ModalityKind
    shape: list[Annotated[StrictInt, Field(ge=1, le=1_000_000)]] = Field(
        min_length=1, max_length=3, description="Per-sample input shape, e.g. [128, 3] for a 3-axis window."
    )


class ModelSettings(_Model):
    hidden_dim: StrictInt = Field(128, ge=1, le=4096, description="d: encoder output width.")
    proj_dim: StrictInt = Field(128, ge=1, le=4096, description="d_p: width of the projection heads g1, g2.")
    attention_heads: StrictInt = Field(6, ge=1, le=64)
    attention_dim: StrictInt = Field(512, ge=1, le=8192)
    classifier_hidden: StrictInt = Field(64, ge=1, le=8192)
    dropout: StrictFloat = Field(0.1, ge=0.0, lt=1.0)
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
    finetune_text_encoder: bool = Field(
        False, description="Train the transformers encoder of `text` modalities (default: frozen, only its "
        "projection trains)."
    )
    prototype_space: PrototypeSpace = Field(
        "penultimate",
        description="Where the prototypes s and u^m live: the classifier's penultimate layer (`penultimate`), the "
        "raw g1/g2 outputs (`projection`) or their L2-normalised outputs with a cosine head (`normalized`). Shapes "
        "the network: g2's width follows it (docs/algorithm.md).",
    )
    proto_head_scale: StrictFloat = Field(
        10.0, gt=0, le=1e6, description="Scale of the cosine head on s (`normalized` space only)."
    )


class TrainingConfig(_Model):
    """Local-training and aggregation hyper-parameters (docs/method.md); every (R) choice is a field.

    Every setting is a typed field: an unknown or misspelt key is refused (422 at federation create).
    Settings that shape the network live in :class:`ModelSettings`.
    """

    local_epochs: StrictInt = Field(1, ge=1, le=1000)
    batch_size: StrictInt = Field(16, ge=1, le=65536)
    lr: StrictFloat = Field(
        0.05, gt=0, description="Local SGD learning rate. Unset in a federation whose features are standardised "
        "(normalization federated or client), it becomes STANDARDISED_LR = 0.01: at 0.05 the SDK model collapsed "
        "on standardised FSDD + mfeat features when trained centrally and drifted in federations of single-modality "
        "clients (docs/data.md). 0.05 is the UCI-HAR protocol's value (raw features, normalization none).")
    momentum: StrictFloat = Field(0.9, ge=0, lt=1)
    weight_decay: StrictFloat = Field(1e-5, ge=0)
    grad_clip: StrictFloat | None = Field(10.0, gt=0)
    prox_mu: StrictFloat = Field(0.01, ge=0, description="FedProx proximal weight.")
    server_lr: StrictFloat = Field(0.025, gt=0, description="FedOpt global learning rate.")
    server_momentum: StrictFloat = Field(0.9, ge=0, lt=1, description="FedOpt server momentum.")
    lambda_cmpr: StrictFloat = Field(1.0, ge=0)
    lambda_cmpc: StrictFloat = Field(1.0, ge=0)
    lambda_cma: StrictFloat = Field(1.0, ge=0)
    tau: StrictFloat = Field(0.5, gt=0, description="CMPC temperature.")
    cma_distance: Literal["l2", "l1", "smooth_l1"] = "l2"
    cmpc_target: Literal["shared", "modality"] = Field(
        "shared", description="Contrast u^m against the complete prototypes P^k or the other modality's P^{n,k}."
    )
    prototype_weighting: Literal["count", "mean"] = Field(
        "count", description="Complete prototypes as count-weighted or plain mean over clients."
    )
    fedproto_lambda: StrictFloat = Field(1.0, ge=0, description="FedProto: weight of the pull towards the prototypes.")
    pmcmfl_lambda: StrictFloat = Field(1.0, ge=0, description="PmcmFL (simplified): weight of its prototype "
                                       "contrast.")
    pmcmfl_variant: Literal["simplified", "authors_code"] = Field(
        "simplified", description="PmcmFL: `simplified` (our first reconstruction: h^m prototypes from every sample "
        "with m, cosine contrast weighted pmcmfl_lambda) or `authors_code` (as the authors' public code: prototypes "
        "from complete samples, a fused-representation prototype, in-batch CLIP contrast with their weights; "
        "docs/algorithm.md).")
    lambda_proto_ce: StrictFloat = Field(
        0.1, ge=0, description="MFCPL: weight of the cosine-head cross-entropy on s (`normalized` space only)."
    )
    prototype_source: PrototypeSource = Field(
        "complete", description="MFCPL: local shared prototypes from the complete samples (the paper) or from all."
    )
    cmpr_huber_delta: StrictFloat | None = Field(
        10.0, gt=0, description="MFCPL: CMPR's per-sample squared distance d goes through the pseudo-Huber "
        "2 delta^2 (sqrt(1 + d / delta^2) - 1): the plain d up to about delta^2, then a pull of bounded strength, so "
        "features far from their prototype (unscaled inputs, a diverging client) cannot blow the term up. In the "
        "per-dimension units of the `penultimate` space delta is an RMS distance per feature. None: the plain "
        "squared distance (the behaviour before; docs/algorithm.md, 'Stability of the prototype pull').",
    )
    mfcpl_fill: StrictBool = Field(
        False, description="MFCPL: a sample's missing modality m takes, in the fusion, the complete per-modality "
        "prototype of its class (PmcmFL's completion inside MFCPL), so clients that lack m train the fusion on "
        "inputs shaped like the complete ones. The per-modality levels then hold encoder features h^m (from every "
        "sample that has m) instead of g2 outputs u^m; needs cmpc_target = shared (docs/algorithm.md).",
    )
    mfcpl_synthesize: StrictBool = Field(
        False, description="MFCPL (with mfcpl_fill): at the start of each round the received model recomputes the "
        "complete prototype of every class that each modality's h^m prototype covers, from those prototypes alone "
        "(the fill in every position), so complete prototypes exist for every such class and come from the current "
        "model; a class it cannot synthesise keeps the received complete prototype.",
    )
    modality_dropout: StrictFloat = Field(
        0.0, ge=0, lt=1, description="Any algorithm: each step, every sample that has all modalities loses one, "
        "chosen uniformly, with this probability (complete clients also learn to classify from one modality).",
    )

    flism_lambda_supcon: StrictFloat = Field(
        1.0, ge=0, description="FLISM: weight of the supervised contrastive loss between views of a sample with "
        "different modalities (modality-invariant representation learning; 0 turns it off).",
    )
    flism_views: Literal["dropout", "modalities"] = Field(
        "dropout", description="FLISM: the second view of a sample. `dropout` (the paper's code): the fused "
        "embedding s of a second forward pass with a random non-empty strict subset of the sample's present "
        "modalities dropped and Gaussian noise added; `modalities`: each present modality's u^m (no second pass).",
    )
    flism_temperature: StrictFloat = Field(0.1, gt=0, description="FLISM: SupCon temperature.")
    flism_base_temperature: StrictFloat = Field(
        0.07, gt=0, description="FLISM: SupCon base temperature; the loss is scaled by temperature / base_temperature."
    )
    flism_noise_std: StrictFloat = Field(
        0.7, ge=0, description="FLISM: std of the Gaussian noise added to the inputs of the `dropout` view."
    )
    flism_lambda_kd: StrictFloat = Field(
        1.0, ge=0, description="FLISM: weight of the distillation from the received global model "
        "(global-aligned knowledge distillation; 0 turns it off and skips the teacher).",
    )
    flism_kd_temperature: StrictFloat = Field(
        1.0, gt=0, description="FLISM: distillation temperature T (the KL term is multiplied by T^2)."
    )
    flism_weighting: Literal["entropy", "entropy_x_samples"] = Field(
        "entropy", description="FLISM server: weight of client i in the average, 1 / H_i (the paper's code, "
        "sample counts ignored) or num_samples_i / H_i, with H_i the client's reported mean prediction entropy.",
    )
    flism_entropy_floor: StrictFloat = Field(
        1e-6, gt=0, description="FLISM server: H_i is floored at this value before 1 / H_i (a client whose "
        "predictions are all one-hot cannot take the whole weight through a division by ~0).",
    )

    @model_validator(mode="after")
    def _fill_needs_shared_contrast(self) -> TrainingConfig:
        if self.mfcpl_fill and self.cmpc_target == "modality":
            raise ValueError("mfcpl_fill needs cmpc_target 'shared': with the fill, the per-modality prototypes hold "
                             "encoder features h^m, which CMPC against the other modality cannot use")
        if self.mfcpl_synthesize and not self.mfcpl_fill:
            raise ValueError("mfcpl_synthesize needs mfcpl_fill: it synthesises from the per-modality encoder "
                             "prototypes h^m that only the fill makes the clients send")
        return self

# Where each key of the former free-form ``training.options`` bag lives now (section, field).
LEGACY_OPTIONS: dict[str, tuple[str, str]] = {
    "prototype_space": ("model", "prototype_space"),
    "proto_head_scale": ("model", "proto_head_scale"),
    "finetune_text_encoder": ("model", "finetune_text_encoder"),
    "lambda_proto_ce": ("training", "lambda_proto_ce"),
    "pmcmfl_lambda": ("training", "pmcmfl_lambda"),
    "prototype_source": ("training", "prototype_source"),
}


def upgrade_legacy_settings(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A federation or experiment config (as JSON data) with ``training.options`` moved into typed fields.

    Returns the upgraded copy and the option keys that were dropped: keys no version of the trainer read,
    which the old bag accepted and ignored. Configs without ``training.options`` come back unchanged. Used by
    the stored-config migration and when older experiment results are read.
    """
    training = config.get("training")
    if not isinstance(training, dict) or "options" not in training:
        return config, []
    upgraded = {**config, "training": {k: v for k, v in training.items() if k != "options"}}
    dropped = []
    for key, value in (training.get("options") or {}).items():
        if key not in LEGACY_OPTIONS:
            dropped.append(key)
            continue
        section, field = LEGACY_OPTIONS[key]
        upgraded[section] = {**(upgraded.get(section) or {}), field: value}
    return upgraded, dropped


NormalizationMode = Literal["none", "federated", "client"]
STANDARDISED_LR = 0.01
"""The learning rate a federation on standardised features gets when it sets none (TrainingConfig.lr)."""

NORMALIZED_KINDS = frozenset({ModalityKind.VECTOR, ModalityKind.TIMESERIES, ModalityKind.TOKENS})
"""Kinds whose features are standardised (token ids, ``text``, never are)."""


def feature_dim(spec: ModalitySpec) -> int:
    """The width statistics are kept over: the last axis (a vector's features, a series' channels)."""
    return spec.shape[-1]


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class FeatureStats(_Model):
    """One modality's standardisation: ``(x - mean) / std`` over its last axis."""

    mean: list[FiniteFloat] = Field(min_length=1, max_length=1_000_000)
    std: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(min_length=1, max_length=1_000_000)
    count: FiniteFloat = Field(0.0, ge=0, description="Feature rows the statistics come from (information only).")

    @model_validator(mode="after")
    def _same_length(self) -> FeatureStats:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std must have the same length")
        return self


class Normalization(_Model):
    """How nodes and evaluators standardise vector, time-series and token features before the model sees them.

    ``federated``: with ``stats``, statistics of every client's training data combined (count, sum and sum of
    squares per feature); ``client``: each node standardises with its own training data's statistics (an
    evaluator with those of the data it scores); ``none``: features as loaded. docs/data.md compares them.
    """

    mode: NormalizationMode = "none"
    stats: dict[Identifier, FeatureStats] | None = Field(
        None, description="Per modality (federated mode only); a modality without an entry is left as it is.")

    @model_validator(mode="after")
    def _stats_only_when_federated(self) -> Normalization:
        if self.mode == "federated" and not self.stats:
            raise ValueError("federated normalization needs stats per modality (mfcpl federation create "
                             "--from-dataset computes them)")
        if self.mode != "federated" and self.stats:
            raise ValueError(f"stats are only used with mode federated, not {self.mode}")
        return self


class FederationStatus(StrEnum):
    WAITING = "waiting"  # no model version 0 yet, or not enough live clients for the first round
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


FINISHED_STATUSES = frozenset({FederationStatus.COMPLETED, FederationStatus.CANCELLED})
"""Final states: nothing happens in the federation any more."""


class FederationCreate(_Model):
    name: Name
    algorithm: Algorithm = Algorithm.MFCPL
    num_classes: StrictInt = Field(ge=2, le=100_000)
    class_names: list[ClassName] | None = None
    modalities: list[ModalitySpec] = Field(min_length=1, max_length=16)
    model: ModelSettings = Field(default_factory=ModelSettings)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    rounds: StrictInt = Field(200, ge=1, le=1_000_000)
    clients_per_round: StrictInt = Field(
        10, ge=1, le=100_000,
        description="Participants sampled per round, from the live clients that can train (fewer when fewer can).",
    )
    quorum: StrictInt | None = Field(
        None, ge=1, description="Updates needed to close a round at its deadline (default: clients_per_round); "
        "capped at the round's participants.",
    )
    min_clients: StrictInt | None = Field(
        None, ge=1, description="When set: live clients that can train (at least one modality) needed before a "
        "round opens. When unset: a round opens once clients_per_round clients are live, those without any "
        "modality included, and at least one can train; it samples min(clients_per_round, clients that can "
        "train).",
    )
    round_deadline_s: StrictFloat | None = Field(None, gt=0, le=7 * 86400, description="Default from settings.")
    lease_s: StrictFloat = Field(60.0, gt=0, le=86400, description="A client is live this long after its last poll.")
    seed: StrictInt = Field(0, ge=0, lt=2**63)
    normalization: Normalization = Field(
        default_factory=Normalization,
        description="Feature standardisation nodes and evaluators apply before the model (default none).",
    )

    @model_validator(mode="after")
    def _check(self) -> FederationCreate:
        names = [m.name for m in self.modalities]
        if len(set(names)) != len(names):
            raise ValueError("modality names must be unique")
        specs = {m.name: m for m in self.modalities}
        for name, stats in (self.normalization.stats or {}).items():
            if name not in specs:
                raise ValueError(f"normalization.stats: no modality {name!r}")
            if specs[name].kind not in NORMALIZED_KINDS:
                raise ValueError(f"normalization.stats: modality {name!r} is {specs[name].kind}, never normalised")
            if len(stats.mean) != feature_dim(specs[name]):
                raise ValueError(f"normalization.stats.{name}: {len(stats.mean)} values for a feature width of "
                                 f"{feature_dim(specs[name])}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError("class_names must have num_classes entries")
        if self.quorum is not None and self.quorum > self.clients_per_round:
            raise ValueError("quorum cannot exceed clients_per_round")
        if self.normalization.mode != "none" and "lr" not in self.training.model_fields_set:
            self.training = self.training.model_copy(update={"lr": STANDARDISED_LR})
        return self


class Federation(BaseModel):
    id: str
    status: FederationStatus
    status_reason: str | None = Field(
        None, description="Why the federation is where it is, computed on read: what a federation without an open "
        "round waits for (e.g. `2 of 4 clients needed (min_clients) can train (3 live, 1 with no modality)`), the "
        "open round's progress, a closing round's attempts; null once completed or cancelled.",
    )
    config: FederationCreate
    current_round: int | None = Field(None, description="Number of the round in progress or last closed.")
    latest_model_version: int | None = None
    created_at: datetime
    updated_at: datetime


class ClientEnroll(_Model):
    name: Name


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
    class_counts: list[Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]] = Field(
        max_length=100_000, description="Training samples per class."
    )
    num_samples: StrictInt = Field(ge=0, le=2**31 - 1)


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
    reason: str | None = Field(
        None, description="Why `wait` (the federation's `status_reason` while no round is open) or `done`."
    )


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
    failure_reason: str | None = Field(
        None, description="Why the round failed; while it is still closing after a failed attempt (retried up to "
        "the coordinator's max_close_attempts), that attempt's error.",
    )
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
    metrics: dict[MetricKey, StrictFloat] = Field(max_length=MAX_METRICS, description="At most 256 metrics.")
    model_version: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] | None = None


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
    FEDERATION_WAITING = "federation.waiting"  # data.reason (as status_reason) and counts; when the reason changes


class Event(BaseModel):
    id: int
    federation_id: str
    type: EventType
    round: int | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class ViewerTokenCreate(_Model):
    label: Name = Field(description="Who or what the token is for (a dashboard, a person).")


class ViewerToken(BaseModel):
    """A read-only viewer token (the token itself is never shown again)."""

    id: str
    label: str
    revoked: bool
    created_at: datetime
    revoked_at: datetime | None = None


class ViewerTokenCreated(ViewerToken):
    token: str = Field(description="Bearer token with read-only access. Shown once; stored only as a hash.")


class Problem(BaseModel):
    """RFC 9457 problem details, with a stable machine-readable ``code``."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None
