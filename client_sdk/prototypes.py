"""Local prototypes: per-class means of the model's embeddings over a client's samples (no-grad pass).

Levels (docs/method.md): ``shared`` is the mean fused embedding ``s`` per class over the *complete* samples
(every modality present); each modality m has its own level, the mean ``u^m`` per class over the samples
that have m. FedProto uses the classifier's penultimate features of *all* samples as its ``shared``
level; PmcmFL uses the per-modality encoder features ``h^m``. Counts travel with the rows so the
coordinator can weight by them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from client_sdk.data import MultimodalArrays
from client_sdk.model import MultimodalModel
from mfcpl.wire.constants import SHARED_LEVEL
from mfcpl.wire.tensors import LocalPrototypes

SharedFeature = Literal["s", "penultimate", "z"]
ModalityFeature = Literal["u", "h"]
SharedFrom = Literal["complete", "all"]
ModalityFrom = Literal["present", "complete"]


@dataclass
class Embeddings:
    """Every sample's embeddings from one no-grad pass, as numpy (float32)."""

    logits: np.ndarray  # [N, C]
    s: np.ndarray  # [N, d_p]
    penultimate: np.ndarray  # [N, hidden]
    z: np.ndarray  # [N, heads * d] the fused representation
    h: dict[str, np.ndarray]  # [N, d]
    u: dict[str, np.ndarray]  # [N, d_p]


def batch_tensors(
    model: MultimodalModel, data: MultimodalArrays, index: np.ndarray
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model's inputs and presence masks for rows ``index`` of ``data``.

    A modality the model declares but ``data`` does not hold is fed as zeros, absent for every row.
    """
    inputs: dict[str, torch.Tensor] = {}
    present: dict[str, torch.Tensor] = {}
    device = model_device(model)
    for name, spec in model.specs.items():
        if name in data.inputs:
            inputs[name] = torch.from_numpy(np.ascontiguousarray(data.inputs[name][index]))
            present[name] = torch.from_numpy(np.ascontiguousarray(data.present[name][index]))
        else:
            dtype = torch.int64 if spec.kind == "text" else torch.float32
            inputs[name] = torch.zeros(len(index), *spec.shape, dtype=dtype)
            present[name] = torch.zeros(len(index), dtype=torch.bool)
        if spec.kind != "text":
            inputs[name] = inputs[name].float()
        if device.type != "cpu":
            inputs[name] = inputs[name].to(device, non_blocking=True)
            present[name] = present[name].to(device, non_blocking=True)
    return inputs, present


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters live (CPU unless it was moved)."""
    return next(model.parameters()).device


def present_matrix(model: MultimodalModel, data: MultimodalArrays) -> np.ndarray:
    """[N, M] bool: sample i has the model's modality j (a modality absent from ``data`` is missing)."""
    cols = [data.present[m] if m in data.present else np.zeros(len(data), bool) for m in model.modalities]
    return np.stack(cols, axis=1) if cols else np.zeros((len(data), 0), bool)


@torch.no_grad()
def embed(model: MultimodalModel, data: MultimodalArrays, batch_size: int = 256) -> Embeddings:
    """One eval-mode pass over ``data`` (the model's train/eval mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"logits": [], "s": [], "penultimate": [], "z": []}
    h: dict[str, list[np.ndarray]] = {m: [] for m in model.modalities}
    u: dict[str, list[np.ndarray]] = {m: [] for m in model.modalities}
    try:
        for start in range(0, len(data), batch_size):
            index = np.arange(start, min(start + batch_size, len(data)))
            out = model(*batch_tensors(model, data, index))
            parts["logits"].append(out.logits.cpu().numpy())
            parts["s"].append(out.s.cpu().numpy())
            parts["penultimate"].append(out.penultimate.cpu().numpy())
            parts["z"].append(out.z.cpu().numpy())
            for m in model.modalities:
                h[m].append(out.h[m].cpu().numpy())
                u[m].append(out.u[m].cpu().numpy())
    finally:
        model.train(was_training)

    def cat(chunks: list[np.ndarray], width: int) -> np.ndarray:
        return np.concatenate(chunks) if chunks else np.zeros((0, width), np.float32)

    return Embeddings(
        logits=cat(parts["logits"], model.num_classes),
        s=cat(parts["s"], model.proto_dim),
        penultimate=cat(parts["penultimate"], model.classifier_out.in_features),
        z=cat(parts["z"], model.fused_dim),
        h={m: cat(v, model.hidden_dim) for m, v in h.items()},
        u={m: cat(v, model.proto_dim) for m, v in u.items()},
    )


def class_means(vectors: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> LocalPrototypes | None:
    """Per-class mean of ``vectors[mask]``, for the classes that have at least one selected row."""
    labels = np.asarray(labels)[mask]
    if labels.size == 0:
        return None
    vectors = np.asarray(vectors, np.float64)[mask]
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(classes), vectors.shape[1]))
    np.add.at(sums, inverse, vectors)
    return LocalPrototypes(
        classes=classes.astype(np.int64),
        vectors=(sums / counts[:, None]).astype(np.float32),
        counts=counts.astype(np.float32),
    )


def local_prototypes(
    model: MultimodalModel,
    data: MultimodalArrays,
    levels: Iterable[str] | None = None,
    *,
    shared_feature: SharedFeature = "s",
    shared_from: SharedFrom = "complete",
    modality_feature: ModalityFeature = "u",
    modality_from: ModalityFrom = "present",
    batch_size: int = 256,
    embeddings: Embeddings | None = None,
) -> dict[str, LocalPrototypes]:
    """Local prototypes of the requested ``levels`` (default: ``shared`` and every modality).

    A level with no eligible sample (e.g. ``shared`` on a client without complete samples) is left out,
    as is every class without an eligible sample.
    """
    wanted = [SHARED_LEVEL, *model.modalities] if levels is None else list(levels)
    unknown = [lv for lv in wanted if lv != SHARED_LEVEL and lv not in model.modalities]
    if unknown:
        raise ValueError(f"unknown prototype levels {unknown}; expected 'shared' or one of {model.modalities}")
    emb = embeddings if embeddings is not None else embed(model, data, batch_size)
    has = present_matrix(model, data)
    out: dict[str, LocalPrototypes] = {}
    for level in wanted:
        if level == SHARED_LEVEL:
            mask = has.all(axis=1) if shared_from == "complete" else has.any(axis=1)
            vectors = {"s": emb.s, "penultimate": emb.penultimate, "z": emb.z}[shared_feature]
        else:
            mask = has[:, model.modalities.index(level)] if modality_from == "present" else has.all(axis=1)
            vectors = emb.u[level] if modality_feature == "u" else emb.h[level]
        protos = class_means(vectors, data.labels, np.asarray(mask))
        if protos is not None:
            out[level] = protos
    return out
