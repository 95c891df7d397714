"""PmcmFL (Bao et al., arXiv 2312.13508; a simplified reconstruction, docs/algorithm.md): per-modality prototypes of the
encoder features h^m fill a sample's missing modality, and a prototype contrast aligns h^m with them."""

from __future__ import annotations

from torch import Tensor

from client_sdk.algorithms import register
from client_sdk.algorithms.base import ClientAlgorithm, LossTerm, class_prototype_fill
from client_sdk.data import MultimodalArrays
from client_sdk.losses import prototype_clip_loss
from client_sdk.model import ModelOutput
from client_sdk.prototypes import local_prototypes
from mfcpl.wire.tensors import LocalPrototypes


@register("pmcmfl")
class PmcmFL(ClientAlgorithm):
    def _levels(self) -> list[str]:
        return [m for m in self.local.model.modalities if self.local.has_level(m)]

    def fill(self, labels: Tensor) -> dict[str, tuple[Tensor, Tensor]] | None:
        return class_prototype_fill(self.local, labels)

    def loss_terms(self, out: ModelOutput, labels: Tensor) -> list[LossTerm]:
        levels = self._levels()
        if not levels:
            return []
        protos = self.local.prototypes
        value = prototype_clip_loss(out.h, out.present, labels, {m: protos[m].vectors for m in levels},
                                    {m: protos[m].coverage for m in levels}, self.local.config.training.tau)
        return [LossTerm("pmcmfl", value, self.local.config.training.pmcmfl_lambda)]

    def local_prototypes(self, data: MultimodalArrays) -> dict[str, LocalPrototypes]:
        return local_prototypes(self.local.model, data, self.local.model.modalities, modality_feature="h")
