"""Bridges between torch and the numpy dictionaries of :mod:`mfcpl.wire.tensors` (never pickle)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mfcpl.wire.tensors import PrototypeTable


def model_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """Every tensor of ``model.state_dict()`` as an owned, contiguous numpy array (same names and dtypes)."""
    return {name: t.detach().cpu().contiguous().numpy().copy() for name, t in model.state_dict().items()}


def load_numpy_weights(model: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Copy ``weights`` into ``model`` in place; names, shapes and dtypes must match the model exactly.

    Accepts read-only views (e.g. zero-copy safetensors arrays): values are copied.
    """
    state = model.state_dict()
    missing = sorted(set(state) - set(weights))
    unknown = sorted(set(weights) - set(state))
    if missing or unknown:
        raise ValueError(f"weights do not match the model: missing {missing[:5]}, unknown {unknown[:5]}")
    converted: dict[str, torch.Tensor] = {}
    for name, target in state.items():
        arr = np.asarray(weights[name])
        if tuple(arr.shape) != tuple(target.shape):
            raise ValueError(f"weight {name!r}: shape {list(arr.shape)} != model's {list(target.shape)}")
        tensor = torch.from_numpy(np.array(arr, copy=True))
        if tensor.dtype != target.dtype:
            raise ValueError(f"weight {name!r}: dtype {tensor.dtype} != model's {target.dtype}")
        converted[name] = tensor
    model.load_state_dict(converted, strict=True)


@dataclass
class TorchPrototypes:
    """One prototype level as torch tensors: ``vectors`` [C, d] float32 and ``coverage`` [C] bool."""

    vectors: torch.Tensor
    coverage: torch.Tensor

    @property
    def any(self) -> bool:
        return bool(self.coverage.any())


def prototypes_to_torch(
    tables: Mapping[str, PrototypeTable] | None, num_classes: int, device: torch.device | str = "cpu"
) -> dict[str, TorchPrototypes]:
    """Complete prototype tables -> torch, checked against the number of classes; non-finite rows are refused."""
    out: dict[str, TorchPrototypes] = {}
    for level, table in (tables or {}).items():
        vectors = np.asarray(table.vectors, dtype=np.float32)
        counts = np.asarray(table.counts, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != num_classes or counts.shape != (num_classes,):
            raise ValueError(
                f"prototype level {level!r}: expected [{num_classes}, d] vectors and [{num_classes}] counts, "
                f"got {list(vectors.shape)} and {list(counts.shape)}"
            )
        coverage = counts > 0
        if not np.isfinite(vectors[coverage]).all():
            raise ValueError(f"prototype level {level!r} holds non-finite values")
        vectors = np.where(coverage[:, None], vectors, 0.0).astype(np.float32)
        out[level] = TorchPrototypes(torch.from_numpy(vectors).to(device), torch.from_numpy(coverage).to(device))
    return out
