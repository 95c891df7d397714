"""The in-memory form every loader produces and every trainer consumes (numpy only, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MultimodalArrays:
    """N samples with several modalities, any of which may be missing per sample.

    ``inputs[m]`` is ``[N, *shape_m]`` (float32 features, or int64 token ids for text); a missing
    modality's rows are zero-filled and ``present[m]`` is False there. ``labels`` is ``[N]`` int64.
    """

    inputs: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    labels: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.labels)
        if set(self.inputs) != set(self.present):
            raise ValueError("inputs and present must name the same modalities")
        for m in self.inputs:
            if len(self.inputs[m]) != n or len(self.present[m]) != n:
                raise ValueError(f"modality {m!r}: length differs from labels ({n})")
            self.present[m] = np.asarray(self.present[m], dtype=bool)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def modalities(self) -> list[str]:
        return list(self.inputs)

    @property
    def complete(self) -> np.ndarray:
        """[N] bool: the sample has every modality."""
        mask = np.ones(len(self), dtype=bool)
        for p in self.present.values():
            mask &= p
        return mask

    def subset(self, index: np.ndarray) -> MultimodalArrays:
        return MultimodalArrays(
            inputs={m: x[index] for m, x in self.inputs.items()},
            present={m: p[index] for m, p in self.present.items()},
            labels=self.labels[index],
        )

    def with_missing(self, missing: dict[str, np.ndarray]) -> MultimodalArrays:
        """A copy where ``missing[m]`` ([N] bool) rows of modality m are dropped (zero-filled, not present)."""
        inputs = dict(self.inputs)
        present = dict(self.present)
        for m, drop in missing.items():
            drop = np.asarray(drop, dtype=bool)
            if drop.any():
                x = inputs[m].copy()
                x[drop] = 0
                inputs[m] = x
                present[m] = present[m] & ~drop
        return MultimodalArrays(inputs, present, self.labels.copy())

    def class_counts(self, num_classes: int) -> list[int]:
        return np.bincount(self.labels, minlength=num_classes).astype(int).tolist()
