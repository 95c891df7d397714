"""FedProto (Tan et al., AAAI 2022): pull each sample's penultimate features towards its class's global prototype.

Its prototypes are the classifier's penultimate features of every sample (complete or not), one ``shared``
level.
"""

from __future__ import annotations

from torch import Tensor

from client_sdk.algorithms import register
from client_sdk.algorithms.base import ClientAlgorithm, LossTerm
from client_sdk.data import MultimodalArrays
from client_sdk.losses import fedproto_loss
from client_sdk.model import ModelOutput
from client_sdk.prototypes import local_prototypes
from mfcpl.wire.constants import SHARED_LEVEL
from mfcpl.wire.tensors import LocalPrototypes


@register("fedproto")
class FedProto(ClientAlgorithm):
    def loss_terms(self, out: ModelOutput, labels: Tensor) -> list[LossTerm]:
        shared = self.local.shared
        if shared is None:
            return []
        value = fedproto_loss(out.penultimate, labels, shared.vectors, shared.coverage)
        return [LossTerm("fedproto", value, self.local.config.training.fedproto_lambda)]

    def local_prototypes(self, data: MultimodalArrays) -> dict[str, LocalPrototypes]:
        return local_prototypes(self.local.model, data, [SHARED_LEVEL], shared_feature="penultimate",
                                shared_from="all")
