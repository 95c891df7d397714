"""MFCPL (Le et al., arXiv 2401.13898): complete class prototypes guide local training through CMPR, CMPC and CMA.

Shared prototypes come from the client's complete samples (or from all samples with
``training.prototype_source = all``), per-modality prototypes from the samples that have the modality (g2
outputs u^m, or encoder features h^m with ``training.mfcpl_fill``, which fills a missing modality with them).
docs/algorithm.md explains each term and setting.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from client_sdk.algorithms import register
from client_sdk.algorithms.base import ClientAlgorithm, LossTerm, class_prototype_fill
from client_sdk.data import MultimodalArrays
from client_sdk.losses import cma_loss, cmpc_loss, cmpr_loss
from client_sdk.model import ModelOutput
from client_sdk.prototypes import local_prototypes
from mfcpl.wire.tensors import LocalPrototypes


@register("mfcpl")
class Mfcpl(ClientAlgorithm):
    def fill(self, labels: Tensor) -> dict[str, tuple[Tensor, Tensor]] | None:
        return class_prototype_fill(self.local, labels) if self.local.config.training.mfcpl_fill else None

    def loss_terms(self, out: ModelOutput, labels: Tensor) -> list[LossTerm]:
        training = self.local.config.training
        space = self.local.config.model.prototype_space
        terms: list[LossTerm] = []
        if out.proto_logits is not None and training.lambda_proto_ce > 0:
            terms.append(LossTerm("proto_ce", F.cross_entropy(out.proto_logits, labels), training.lambda_proto_ce))
        shared = self.local.shared
        if shared is None:
            return terms
        targets = F.normalize(shared.vectors, dim=1) if space == "normalized" else shared.vectors
        protos = self.local.prototypes
        levels = {k: v.vectors for k, v in protos.items()}
        coverage = {k: v.coverage for k, v in protos.items()}
        return terms + [
            LossTerm("cmpr", cmpr_loss(out.s, labels, targets, shared.coverage, per_dimension=space == "penultimate",
                                       huber_delta=training.cmpr_huber_delta), training.lambda_cmpr),
            LossTerm("cmpc", cmpc_loss(out.u, out.present, labels, levels, coverage, training.tau,
                                       training.cmpc_target), training.lambda_cmpc),
            LossTerm("cma", cma_loss(out.u, out.present, training.cma_distance), training.lambda_cma),
        ]

    def local_prototypes(self, data: MultimodalArrays) -> dict[str, LocalPrototypes]:
        training = self.local.config.training
        return local_prototypes(self.local.model, data, shared_from=training.prototype_source,
                                modality_feature="h" if training.mfcpl_fill else "u")
