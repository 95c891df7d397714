"""FedProx (Li et al., 2020): a proximal term mu/2 * ||w - w_global||^2 keeps local training near the global model."""

from __future__ import annotations

import numpy as np
import torch

from client_sdk.algorithms import register
from client_sdk.algorithms.base import ClientAlgorithm, LocalRound, LossTerm
from client_sdk.losses import fedprox_term
from client_sdk.model import ModelOutput
from client_sdk.prototypes import model_device


@register("fedprox")
class FedProx(ClientAlgorithm):
    def __init__(self, local: LocalRound) -> None:
        super().__init__(local)
        model = local.model
        self.params = [p for p in model.parameters() if p.requires_grad]
        if local.global_weights is None:
            self.anchor = [p.detach().clone() for p in self.params]
        else:
            names = [n for n, p in model.named_parameters() if p.requires_grad]
            device = model_device(model)
            self.anchor = [torch.from_numpy(np.array(local.global_weights[n], np.float32)).to(device) for n in names]

    def loss_terms(self, out: ModelOutput, labels: torch.Tensor) -> list[LossTerm]:
        return [LossTerm("prox", fedprox_term(self.params, self.anchor, self.local.config.training.prox_mu))]
