"""What a client-side algorithm is: its extra loss terms, its local prototypes, its fill, its round metrics.

The training loop (:func:`client_sdk.trainer.train_local`) is the same SGD for every algorithm; it asks the
round's :class:`ClientAlgorithm` for what differs. One instance serves one round of local training, so an
algorithm may keep per-round state (FedProx's anchor, FedNova's step count).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import Tensor

from client_sdk.data import MultimodalArrays
from client_sdk.model import ModelOutput, MultimodalModel
from client_sdk.torch_io import TorchPrototypes
from mfcpl.wire.constants import SHARED_LEVEL
from mfcpl.wire.schemas import FederationCreate
from mfcpl.wire.tensors import LocalPrototypes


@dataclass(frozen=True)
class LossTerm:
    """A named loss term and its weight in the total (the total is ``ce + sum(weight * value)``)."""

    name: str
    value: Tensor
    weight: float = 1.0


@dataclass(frozen=True)
class LocalRound:
    """What an algorithm sees of one round of local training."""

    model: MultimodalModel
    config: FederationCreate
    prototypes: Mapping[str, TorchPrototypes]  # the coordinator's complete prototypes (may be empty)
    global_weights: Mapping[str, np.ndarray] | None  # the round's input model; None: the model's weights on entry

    def has_level(self, level: str) -> bool:
        return level in self.prototypes and self.prototypes[level].any

    @property
    def shared(self) -> TorchPrototypes | None:
        return self.prototypes[SHARED_LEVEL] if self.has_level(SHARED_LEVEL) else None


def class_prototype_fill(local: LocalRound, labels: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Each modality's complete per-modality prototype of the sample's class, where the coordinator has one
    (PmcmFL's completion; MFCPL's with ``training.mfcpl_fill``)."""
    protos = local.prototypes
    return {m: (protos[m].vectors[labels], protos[m].coverage[labels]) for m in local.model.modalities
            if local.has_level(m)}


class ClientAlgorithm:
    """The default is FedAvg's client: cross-entropy only, no prototypes, nothing filled.

    Subclasses override what their algorithm adds and register themselves with
    :func:`client_sdk.algorithms.register`.
    """

    name: ClassVar[str]

    def __init__(self, local: LocalRound) -> None:
        self.local = local

    def fill(self, labels: Tensor) -> dict[str, tuple[Tensor, Tensor]] | None:
        """Stand-ins for missing modalities, as :meth:`MultimodalModel.forward` takes them (None: nothing)."""
        return None

    def loss_terms(self, out: ModelOutput, labels: Tensor) -> list[LossTerm]:
        """Terms added to the cross-entropy for one batch, in a fixed order."""
        return []

    def after_step(self) -> None:
        """Called after every optimiser step."""

    def local_prototypes(self, data: MultimodalArrays) -> dict[str, LocalPrototypes]:
        """The local prototypes sent with the update (none by default)."""
        return {}

    def round_metrics(self) -> dict[str, float]:
        """Extra metrics reported with the update (and averaged into the round's train metrics)."""
        return {}
