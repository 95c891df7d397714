"""One local trainer for every algorithm (mfcpl, fedavg, fedprox, fedopt, fedproto, pmcmfl) and evaluation.

The algorithm is a setting (``FederationCreate.algorithm``), never a fork of the loop: the loop is the
same SGD over seeded shuffles; only the loss terms added to the cross-entropy differ. See
docs/algorithm.md for every setting and the choices where the paper is silent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from client_sdk.data import MultimodalArrays
from client_sdk.evaluation import classification_metrics
from client_sdk.losses import cma_loss, cmpc_loss, cmpr_loss, fedproto_loss, fedprox_term, prototype_clip_loss
from client_sdk.model import (
    DEFAULT_PROTOTYPE_SPACE,
    MultimodalModel,
    PrototypeSpace,
    choice_option,
    float_option,
    prototype_space_of,
)
from client_sdk.prototypes import SharedFrom, batch_tensors, embed, local_prototypes, model_device, present_matrix
from client_sdk.torch_io import TorchPrototypes, model_to_numpy, prototypes_to_torch
from mfcpl.wire.schemas import Algorithm, FederationCreate, TrainingConfig
from mfcpl.wire.tensors import LocalPrototypes, PrototypeTable


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the update must not be posted."""


@dataclass
class TrainResult:
    weights: dict[str, np.ndarray]
    num_samples: int
    prototypes: dict[str, LocalPrototypes]
    metrics: dict[str, float] = field(default_factory=dict)


PROTOTYPE_SOURCES: tuple[str, ...] = get_args(SharedFrom)


@dataclass(frozen=True)
class TrainerOptions:
    """The trainer's settings from ``TrainingConfig.options`` (validated), with their defaults."""

    prototype_space: PrototypeSpace = DEFAULT_PROTOTYPE_SPACE
    lambda_proto_ce: float = 0.1  # weight of the cosine-head CE on s (``normalized`` space only)
    pmcmfl_lambda: float = 1.0  # weight of PmcmFL's prototype contrast
    prototype_source: SharedFrom = "complete"  # MFCPL's shared prototypes from complete samples (paper) or all

    @classmethod
    def from_config(cls, training: TrainingConfig) -> TrainerOptions:
        return cls(
            prototype_space=prototype_space_of(training),
            lambda_proto_ce=float_option(training, "lambda_proto_ce", 0.1),
            pmcmfl_lambda=float_option(training, "pmcmfl_lambda", 1.0),
            prototype_source=cast(SharedFrom, choice_option(training, "prototype_source", PROTOTYPE_SOURCES,
                                                            "complete")),
        )


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Running:
    """Sample-weighted running means of named scalars."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weight = 0

    def add(self, values: Mapping[str, Tensor], n: int) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach()) * n
        self.weight += n

    def means(self, prefix: str) -> dict[str, float]:
        return {prefix + k: v / max(self.weight, 1) for k, v in self.sums.items()}


def _has(protos: Mapping[str, TorchPrototypes], level: str) -> bool:
    return level in protos and protos[level].any


def batch_losses(
    model: MultimodalModel,
    inputs: Mapping[str, Tensor],
    present: Mapping[str, Tensor],
    labels: Tensor,
    algorithm: Algorithm,
    training: TrainingConfig,
    options: TrainerOptions,
    protos: Mapping[str, TorchPrototypes],
    reference: list[Tensor] | None,
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """(total loss, its named terms, logits) for one batch under ``algorithm``."""
    fill = None
    if algorithm == Algorithm.PMCMFL:
        fill = {
            m: (protos[m].vectors[labels], protos[m].coverage[labels]) for m in model.modalities if _has(protos, m)
        }
    out = model(inputs, present, fill=fill)
    terms: dict[str, Tensor] = {"ce": F.cross_entropy(out.logits, labels)}
    weighted: list[Tensor] = [terms["ce"]]
    if algorithm == Algorithm.MFCPL:
        if out.proto_logits is not None and options.lambda_proto_ce > 0:
            terms["proto_ce"] = F.cross_entropy(out.proto_logits, labels)
            weighted.append(options.lambda_proto_ce * terms["proto_ce"])
        if _has(protos, "shared"):
            shared = protos["shared"]
            targets = F.normalize(shared.vectors, dim=1) if options.prototype_space == "normalized" else shared.vectors
            terms["cmpr"] = cmpr_loss(out.s, labels, targets, shared.coverage,
                                      per_dimension=options.prototype_space == "penultimate")
            levels = {k: v.vectors for k, v in protos.items()}
            coverage = {k: v.coverage for k, v in protos.items()}
            terms["cmpc"] = cmpc_loss(out.u, out.present, labels, levels, coverage, training.tau, training.cmpc_target)
            terms["cma"] = cma_loss(out.u, out.present, training.cma_distance)
            weighted += [
                training.lambda_cmpr * terms["cmpr"],
                training.lambda_cmpc * terms["cmpc"],
                training.lambda_cma * terms["cma"],
            ]
    elif algorithm == Algorithm.FEDPROX:
        assert reference is not None
        params = [p for p in model.parameters() if p.requires_grad]
        terms["prox"] = fedprox_term(params, reference, training.prox_mu)
        weighted.append(terms["prox"])
    elif algorithm == Algorithm.FEDPROTO:
        if _has(protos, "shared"):
            shared = protos["shared"]
            terms["fedproto"] = fedproto_loss(out.penultimate, labels, shared.vectors, shared.coverage)
            weighted.append(training.fedproto_lambda * terms["fedproto"])
    elif algorithm == Algorithm.PMCMFL:
        levels = {m: protos[m].vectors for m in model.modalities if _has(protos, m)}
        if levels:
            coverage = {m: protos[m].coverage for m in levels}
            terms["pmcmfl"] = prototype_clip_loss(out.h, out.present, labels, levels, coverage, training.tau)
            weighted.append(options.pmcmfl_lambda * terms["pmcmfl"])
    total = torch.stack(weighted).sum()
    terms["loss"] = total
    return total, terms, out.logits


def prototypes_after_training(
    model: MultimodalModel, data: MultimodalArrays, algorithm: Algorithm, options: TrainerOptions = TrainerOptions()
) -> dict[str, LocalPrototypes]:
    """The local prototypes ``algorithm`` sends with its update (none for fedavg, fedprox, fedopt).

    MFCPL's shared level comes from the complete samples (the paper's complete prototypes) unless
    ``options.prototype_source`` is ``all``: then every sample with any modality contributes its s.
    """
    if algorithm == Algorithm.MFCPL:
        return local_prototypes(model, data, shared_from=options.prototype_source)
    if algorithm == Algorithm.FEDPROTO:
        return local_prototypes(model, data, ["shared"], shared_feature="penultimate", shared_from="all")
    if algorithm == Algorithm.PMCMFL:
        return local_prototypes(model, data, model.modalities, modality_feature="h")
    return {}


def train_local(
    model: MultimodalModel,
    data: MultimodalArrays,
    config: FederationCreate,
    global_prototypes: Mapping[str, PrototypeTable] | None = None,
    seed: int = 0,
    global_weights: Mapping[str, np.ndarray] | None = None,
    threads: int = 1,
) -> TrainResult:
    """Run one round of local training in place on ``model`` (already holding the global weights).

    Deterministic for a given ``seed`` and ``threads``: dropout draws come from a forked torch RNG seeded
    with ``seed`` (the caller's RNG state is untouched) and the epoch shuffles from
    ``numpy.random.default_rng(seed)``. Samples without any modality are skipped. ``global_weights``
    (FedProx's anchor) defaults to the model's weights on entry.
    """
    algorithm = Algorithm(config.algorithm)
    training = config.training
    options = TrainerOptions.from_config(training)
    if options.prototype_space != model.prototype_space:
        raise ValueError(
            f"the model was built for prototype_space {model.prototype_space!r}, the config asks "
            f"{options.prototype_space!r}"
        )
    has = present_matrix(model, data)
    usable = np.flatnonzero(has.any(axis=1))
    if usable.size == 0:
        raise ValueError("no training sample has any modality: this client cannot train")
    if data.labels.size and (data.labels.min() < 0 or data.labels.max() >= config.num_classes):
        raise ValueError(f"labels must lie in [0, {config.num_classes})")
    device = model_device(model)
    protos = prototypes_to_torch(global_prototypes, config.num_classes, device)
    started = time.perf_counter()
    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), torch_threads(threads):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        params = [p for p in model.parameters() if p.requires_grad]
        reference = None
        if algorithm == Algorithm.FEDPROX:
            if global_weights is None:
                reference = [p.detach().clone() for p in params]
            else:
                names = [n for n, p in model.named_parameters() if p.requires_grad]
                reference = [torch.from_numpy(np.array(global_weights[n], np.float32)).to(device) for n in names]
        optimizer = torch.optim.SGD(
            params, lr=training.lr, momentum=training.momentum, weight_decay=training.weight_decay
        )
        model.train()
        running = _Running()
        correct = 0
        for _ in range(training.local_epochs):
            order = usable[rng.permutation(usable.size)]
            for start in range(0, order.size, training.batch_size):
                index = np.sort(order[start : start + training.batch_size])
                inputs, present = batch_tensors(model, data, index)
                labels = torch.from_numpy(data.labels[index].astype(np.int64)).to(device)
                loss, terms, logits = batch_losses(
                    model, inputs, present, labels, algorithm, training, options, protos, reference
                )
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"loss became {loss.item()} ({ {k: float(v) for k, v in terms.items()} })")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if training.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, training.grad_clip)
                optimizer.step()
                running.add(terms, len(index))
                correct += int((logits.argmax(dim=1) == labels).sum())
        train_seconds = time.perf_counter() - started
        prototypes = prototypes_after_training(model, data, algorithm, options)
    metrics = running.means("train_")
    metrics["train_accuracy"] = correct / max(running.weight, 1)
    metrics["train_seconds"] = train_seconds
    metrics["num_complete"] = float(has.all(axis=1).sum())
    return TrainResult(
        weights=model_to_numpy(model), num_samples=int(usable.size), prototypes=prototypes, metrics=metrics
    )


def evaluate(model: MultimodalModel, data: MultimodalArrays, num_classes: int, batch_size: int = 512,
             threads: int | None = None) -> dict[str, float]:
    """accuracy, macro_f1, uar (fractions in [0, 1]), auc (one-vs-rest, when defined) and the mean CE loss."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty data set")
    if num_classes != model.num_classes:
        raise ValueError(f"num_classes {num_classes} != the model's {model.num_classes}")
    if threads is None:
        logits = embed(model, data, batch_size).logits
    else:
        with torch_threads(threads):
            logits = embed(model, data, batch_size).logits
    logits_t = torch.from_numpy(logits)
    labels = torch.from_numpy(data.labels.astype(np.int64))
    metrics = classification_metrics(data.labels, torch.softmax(logits_t, dim=1).numpy())
    metrics["loss"] = float(F.cross_entropy(logits_t, labels))
    return metrics
