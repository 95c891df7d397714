"""MFCPL (Le et al., arXiv 2401.13898): complete class prototypes guide local training through CMPR, CMPC and CMA.

Shared prototypes come from the client's complete samples (or from all samples with
``training.prototype_source = all``), per-modality prototypes from the samples that have the modality (g2
outputs u^m, or encoder features h^m with ``training.mfcpl_fill``, which fills a missing modality with them).
docs/algorithm.md explains each term and setting.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from client_sdk.algorithms import register
from client_sdk.algorithms.base import ClientAlgorithm, LocalRound, LossTerm, class_prototype_fill
from client_sdk.data import MultimodalArrays
from client_sdk.losses import cma_loss, cmpc_loss, cmpr_loss
from client_sdk.model import ModelOutput, MultimodalModel
from client_sdk.prototypes import local_prototypes
from client_sdk.torch_io import TorchPrototypes
from mfcpl.wire.constants import SHARED_LEVEL
from mfcpl.wire.tensors import LocalPrototypes


def synthesized_complete_prototypes(model: MultimodalModel, per_modality: Mapping[str, TorchPrototypes],
                                    space: str) -> TorchPrototypes | None:
    """Complete prototypes the received model computes from the per-modality encoder prototypes ``h^m``.

    Class k's row is the shared-space embedding (``s``) of a sample whose every modality position holds
    ``P^{m,k}`` (the fill, with no real input); a class is covered when every modality's prototype covers it.
    Eval mode, no gradient; the model's mode is restored. None when no modality level was received.
    """
    names = model.modalities
    if not names or any(m not in per_modality or not per_modality[m].any for m in names):
        return None
    num_classes, device = per_modality[names[0]].vectors.shape[0], per_modality[names[0]].vectors.device
    fill = {m: (per_modality[m].vectors, per_modality[m].coverage) for m in names}
    covered = torch.stack([per_modality[m].coverage for m in names]).all(dim=0)
    inputs, present = {}, {}
    for m, spec in model.specs.items():
        dtype = torch.int64 if spec.kind == "text" else torch.float32
        inputs[m] = torch.zeros(num_classes, *spec.shape, dtype=dtype, device=device)
        present[m] = torch.zeros(num_classes, dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            s = model(inputs, present, fill=fill).s
    finally:
        model.train(was_training)
    vectors = F.normalize(s, dim=1) if space == "normalized" else s
    return TorchPrototypes(vectors=vectors * covered.unsqueeze(1), coverage=covered)


@register("mfcpl")
class Mfcpl(ClientAlgorithm):
    def __init__(self, local: LocalRound) -> None:
        super().__init__(local)
        self.targets = local.shared  # what CMPR and CMPC pull towards: the received complete prototypes
        training = local.config.training
        if training.mfcpl_synthesize:
            made = synthesized_complete_prototypes(local.model, local.prototypes, local.config.model.prototype_space)
            if made is not None:
                received = self.targets
                if received is not None:  # a class the model cannot synthesise keeps its received prototype
                    keep = ~made.coverage & received.coverage
                    made = TorchPrototypes(
                        vectors=torch.where(keep.unsqueeze(1), received.vectors, made.vectors),
                        coverage=made.coverage | received.coverage)
                self.targets = made if made.any else received

    def fill(self, labels: Tensor) -> dict[str, tuple[Tensor, Tensor]] | None:
        return class_prototype_fill(self.local, labels) if self.local.config.training.mfcpl_fill else None

    def loss_terms(self, out: ModelOutput, labels: Tensor) -> list[LossTerm]:
        training = self.local.config.training
        space = self.local.config.model.prototype_space
        terms: list[LossTerm] = []
        if out.proto_logits is not None and training.lambda_proto_ce > 0:
            terms.append(LossTerm("proto_ce", F.cross_entropy(out.proto_logits, labels), training.lambda_proto_ce))
        shared = self.targets
        if shared is None:
            return terms
        targets = F.normalize(shared.vectors, dim=1) if space == "normalized" else shared.vectors
        protos = {**self.local.prototypes, SHARED_LEVEL: shared}
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
