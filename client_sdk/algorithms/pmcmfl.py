"""PmcmFL (Bao et al., arXiv 2312.13508): per-modality prototypes of the encoder features h^m fill a sample's
missing modality, and a prototype contrast aligns features with the prototypes.

Two variants (``training.pmcmfl_variant``, docs/algorithm.md says what each keeps of the paper):

* ``simplified`` (default, our first reconstruction): prototypes h^m from every sample that has m; the
  contrast is ``pmcmfl_lambda`` x a cosine softmax of h^m over the covered classes (temperature ``tau``).
* ``authors_code``: as the authors' public code does it on our model: prototypes from the complete samples
  only, h^m per modality plus the fused representation z (sent as the ``shared`` level); the loss adds the
  in-batch CLIP contrast of z with its class prototypes (dot product x 1/0.07) weighted 0.01, and of each h^m
  weighted 1e-8 (the code's weights: in effect only the fused contrast acts).
"""

from __future__ import annotations

from torch import Tensor

from client_sdk.algorithms import register
from client_sdk.algorithms.base import ClientAlgorithm, LossTerm, class_prototype_fill
from client_sdk.data import MultimodalArrays
from client_sdk.losses import batch_prototype_clip_loss, prototype_clip_loss
from client_sdk.model import ModelOutput
from client_sdk.prototypes import local_prototypes
from mfcpl.wire.constants import SHARED_LEVEL
from mfcpl.wire.tensors import LocalPrototypes

# The authors' code: logit scale exp(log(1 / 0.07)) (a parameter the optimiser never updates), loss weights
# 0.01 for the fused contrast and 1e-8 for each modality's.
AUTHORS_SCALE = 1 / 0.07
AUTHORS_FUSED_WEIGHT = 0.01
AUTHORS_MODALITY_WEIGHT = 1e-8


@register("pmcmfl")
class PmcmFL(ClientAlgorithm):
    def _levels(self) -> list[str]:
        return [m for m in self.local.model.modalities if self.local.has_level(m)]

    @property
    def _authors_code(self) -> bool:
        return self.local.config.training.pmcmfl_variant == "authors_code"

    def fill(self, labels: Tensor) -> dict[str, tuple[Tensor, Tensor]] | None:
        return class_prototype_fill(self.local, labels)

    def loss_terms(self, out: ModelOutput, labels: Tensor) -> list[LossTerm]:
        levels = self._levels()
        protos = self.local.prototypes
        if not self._authors_code:
            if not levels:
                return []
            value = prototype_clip_loss(out.h, out.present, labels, {m: protos[m].vectors for m in levels},
                                        {m: protos[m].coverage for m in levels}, self.local.config.training.tau)
            return [LossTerm("pmcmfl", value, self.local.config.training.pmcmfl_lambda)]
        terms: list[LossTerm] = []
        fused = self.local.shared
        if fused is not None:
            terms.append(LossTerm("pmcmfl_fused", batch_prototype_clip_loss(
                out.z, labels, fused.vectors, fused.coverage, AUTHORS_SCALE), AUTHORS_FUSED_WEIGHT))
        for m in levels:
            rows = out.present[m]
            if bool(rows.any()):
                terms.append(LossTerm(f"pmcmfl_{m}", batch_prototype_clip_loss(
                    out.h[m][rows], labels[rows], protos[m].vectors, protos[m].coverage, AUTHORS_SCALE),
                    AUTHORS_MODALITY_WEIGHT))
        return terms

    def local_prototypes(self, data: MultimodalArrays) -> dict[str, LocalPrototypes]:
        model = self.local.model
        if not self._authors_code:
            return local_prototypes(model, data, model.modalities, modality_feature="h")
        return local_prototypes(model, data, [SHARED_LEVEL, *model.modalities], shared_feature="z",
                                shared_from="complete", modality_feature="h", modality_from="complete")
