"""One local trainer for every algorithm, and evaluation.

The algorithm is a setting (``FederationCreate.algorithm``), never a fork of the loop: the loop is the
same SGD over seeded shuffles; what differs (extra loss terms, the missing-modality fill, the local
prototypes, extra metrics) comes from the algorithm's plug-in in :mod:`client_sdk.algorithms`. See
docs/algorithm.md for every setting and the choices where the paper is silent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from client_sdk.algorithms import ClientAlgorithm, LocalRound, client_algorithm
from client_sdk.data import MultimodalArrays
from client_sdk.evaluation import classification_metrics
from client_sdk.model import MultimodalModel
from client_sdk.prototypes import batch_tensors, embed, model_device, present_matrix
from client_sdk.torch_io import model_to_numpy, prototypes_to_torch
from mfcpl.wire.schemas import FederationCreate
from mfcpl.wire.tensors import LocalPrototypes, PrototypeTable


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the update must not be posted."""


@dataclass
class TrainResult:
    weights: dict[str, np.ndarray]
    num_samples: int
    prototypes: dict[str, LocalPrototypes]
    metrics: dict[str, float] = field(default_factory=dict)


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


def drop_one_modality(present: Mapping[str, Tensor], probability: float) -> dict[str, Tensor]:
    """Modality dropout: each sample that has every modality loses one, chosen uniformly, with ``probability``.

    Draws from the torch RNG (the trainer's forked, seeded one), so a seeded round stays reproducible.
    """
    names = list(present)
    masks = torch.stack([present[m].bool() for m in names], dim=1)  # [B, M]
    if probability <= 0 or len(names) < 2:
        return {m: masks[:, i] for i, m in enumerate(names)}
    hit = masks.all(dim=1) & (torch.rand(masks.shape[0], device=masks.device) < probability)
    which = torch.randint(len(names), (masks.shape[0],), device=masks.device)
    dropped = hit.unsqueeze(1) & (torch.arange(len(names), device=masks.device).unsqueeze(0) == which.unsqueeze(1))
    kept = masks & ~dropped
    return {m: kept[:, i] for i, m in enumerate(names)}


def batch_losses(
    model: MultimodalModel, inputs: Mapping[str, Tensor], present: Mapping[str, Tensor], labels: Tensor,
    algorithm: ClientAlgorithm,
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """(total loss, its named terms, logits) for one batch: the cross-entropy plus ``algorithm``'s terms."""
    out = model(inputs, present, fill=algorithm.fill(labels))
    terms: dict[str, Tensor] = {"ce": F.cross_entropy(out.logits, labels)}
    weighted: list[Tensor] = [terms["ce"]]
    for term in algorithm.loss_terms(out, labels):
        terms[term.name] = term.value
        weighted.append(term.weight * term.value)
    total = torch.stack(weighted).sum()
    terms["loss"] = total
    return total, terms, out.logits


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
    algorithm_class = client_algorithm(config.algorithm)
    training = config.training
    if config.model.prototype_space != model.prototype_space:
        raise ValueError(
            f"the model was built for prototype_space {model.prototype_space!r}, the config asks "
            f"{config.model.prototype_space!r}"
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
        algorithm = algorithm_class(LocalRound(model, config, protos, global_weights))
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
                if training.modality_dropout > 0:
                    present = drop_one_modality(present, training.modality_dropout)
                labels = torch.from_numpy(data.labels[index].astype(np.int64)).to(device)
                loss, terms, logits = batch_losses(model, inputs, present, labels, algorithm)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"loss became {loss.item()} ({ {k: float(v) for k, v in terms.items()} })")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if training.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, training.grad_clip)
                optimizer.step()
                algorithm.after_step()
                running.add(terms, len(index))
                correct += int((logits.argmax(dim=1) == labels).sum())
        train_seconds = time.perf_counter() - started
        prototypes = algorithm.local_prototypes(data)
    metrics = running.means("train_")
    metrics["train_accuracy"] = correct / max(running.weight, 1)
    metrics["train_seconds"] = train_seconds
    metrics["num_complete"] = float(has.all(axis=1).sum())
    metrics.update(algorithm.round_metrics())
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
