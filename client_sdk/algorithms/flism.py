"""FLISM (Orzikulova et al., arXiv 2405.11828), client side: SupCon across modality subsets, distillation from
the received global model, and the prediction entropy the server weights the client by.

Reimplemented from the paper and its public code (github.com/AdibaOrz/FLISM); docs/method.md ("FLISM") lists
what differs. Per batch the client adds to the cross-entropy

* ``flism_lambda_supcon * SupCon``: a supervised contrastive loss (Khosla et al., 2020) over two views of each
  sample, both L2-normalised: its fused embedding ``s`` and, with ``flism_views = dropout`` (the paper's code),
  the ``s`` of a second forward pass in which a random non-empty strict subset of the sample's present modalities
  is dropped and Gaussian noise is added to the inputs; with ``flism_views = modalities``, each present
  modality's ``u^m`` instead (no second pass). Same-class views of any sample are positives.
* ``flism_lambda_kd * T^2 * KL(softmax(g / T) || softmax(l / T))``: ``g`` are the logits of a frozen copy of the
  round's received global model on the same batch, ``l`` the local model's.

After training it reports the mean prediction entropy ``H`` of the trained local model over its training
samples (eval mode) as the update metric :data:`FLISM_ENTROPY_METRIC`; the server
(``coordinator/strategies/flism.py``) averages the clients' weights with weights ``1 / H``.

The trainer hands :meth:`ClientAlgorithm.loss_terms` the model's output only, not the batch, but the teacher and
the dropout view need the batch's inputs: a forward pre-hook on the local model keeps the latest training
batch's arguments; it is removed when training ends (:meth:`Flism.local_prototypes`) and holds only a weak
reference to the algorithm, so a round that fails leaves a no-op hook behind, never the teacher.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from client_sdk.algorithms import register
from client_sdk.algorithms.base import ClientAlgorithm, LocalRound, LossTerm
from client_sdk.data import MultimodalArrays
from client_sdk.losses import zero_like_graph
from client_sdk.model import ModelOutput, build_model
from client_sdk.prototypes import embed, model_device, present_matrix
from client_sdk.torch_io import load_numpy_weights, model_to_numpy
from mfcpl.wire.tensors import LocalPrototypes

FLISM_ENTROPY_METRIC = "flism_entropy"
"""The update metric the server weights by (the same string as in ``coordinator/strategies/flism.py``)."""


def supcon_loss(features: Tensor, labels: Tensor, valid: Tensor, temperature: float,
                base_temperature: float) -> Tensor:
    """Supervised contrastive loss over views: ``features`` [V, B, d], ``valid`` [V, B] bool, ``labels`` [B].

    Every valid view (view v of sample i, L2-normalised) is an anchor; its positives are the other valid views
    with the same label (the sample's own other views included), its denominator every other valid view:

        L = -(t / t_base) * mean_a mean_{p in P(a)} log( exp(z_a.z_p / t) / sum_{k != a} exp(z_a.z_k / t) )

    over the anchors with at least one positive; an exact 0 connected to the graph when there is none.
    """
    z = F.normalize(features[valid], dim=1, eps=1e-8)
    y = labels.unsqueeze(0).expand_as(valid)[valid]
    n = z.shape[0]
    if n < 2:
        return zero_like_graph(features)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (y.unsqueeze(0) == y.unsqueeze(1)) & ~eye
    counts = positive.sum(dim=1)
    anchors = counts > 0
    if not bool(anchors.any()):
        return zero_like_graph(features)
    mean_log_prob = log_prob.masked_fill(~positive, 0.0).sum(dim=1)[anchors] / counts[anchors]
    return -(temperature / base_temperature) * mean_log_prob.mean()


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch; the teacher is detached."""
    target = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    student = F.log_softmax(student_logits / temperature, dim=1)
    kl = (target.exp() * (target - student)).sum(dim=1).mean()
    return kl * temperature**2


def prediction_entropy(logits: Tensor) -> Tensor:
    """Per row, the entropy ``-sum_c p_c log p_c`` (nats) of ``softmax(logits)``."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def dropout_view_masks(present: Mapping[str, Tensor], names: list[str]) -> tuple[dict[str, Tensor], Tensor]:
    """Presence masks of the augmented view and which samples have one (at least two modalities present).

    Each such sample drops ``k`` of its ``n`` present modalities, ``k`` uniform in ``1..n-1`` and the modalities
    uniform among the present ones (torch's global RNG, seeded by the trainer).
    """
    has = torch.stack([present[m].bool() for m in names], dim=1)  # [B, M]
    n = has.sum(dim=1)
    augmented = n >= 2
    scores = torch.rand(has.shape, device=has.device).masked_fill(~has, 2.0)  # absent ones rank last
    rank = scores.argsort(dim=1).argsort(dim=1)
    k = torch.where(augmented, 1 + (torch.rand(n.shape, device=has.device) * (n - 1).clamp(min=1)).long(),
                    torch.zeros_like(n))
    keep = has & ~(rank < k.unsqueeze(1))
    return {m: keep[:, j] for j, m in enumerate(names)}, augmented


def _batch_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    inputs = args[0] if len(args) > 0 else kwargs["inputs"]
    present = args[1] if len(args) > 1 else kwargs["present"]
    fill = args[2] if len(args) > 2 else kwargs.get("fill")
    return inputs, present, fill


@register("flism")
class Flism(ClientAlgorithm):
    def __init__(self, local: LocalRound) -> None:
        super().__init__(local)
        training = local.config.training
        model = local.model
        self.teacher: nn.Module | None = None
        if training.flism_lambda_kd > 0:
            weights = local.global_weights if local.global_weights is not None else model_to_numpy(model)
            teacher = build_model(local.config, seed=0)  # forks the RNG: the trainer's draws are untouched
            load_numpy_weights(teacher, weights)
            self.teacher = teacher.to(model_device(model)).eval().requires_grad_(False)
        self.dropout_view = training.flism_lambda_supcon > 0 and training.flism_views == "dropout"
        self._batch: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.entropy: float | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        if self.teacher is not None or self.dropout_view:
            ref = weakref.ref(self)

            def capture(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                me = ref()
                if me is not None and module.training:
                    me._batch = (args, kwargs)

            self._hook = model.register_forward_pre_hook(capture, with_kwargs=True)

    def _release(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._batch = None

    def loss_terms(self, out: ModelOutput, labels: Tensor) -> list[LossTerm]:
        training = self.local.config.training
        batch = self._batch
        terms: list[LossTerm] = []
        if training.flism_lambda_supcon > 0:
            terms.append(LossTerm("flism_supcon", self._supcon(out, labels, batch), training.flism_lambda_supcon))
        if self.teacher is not None:
            if batch is None:
                raise RuntimeError("flism: the training batch was not captured")
            inputs, present, fill = _batch_arguments(*batch)
            with torch.no_grad():
                teacher_logits = self.teacher(inputs, present, fill=fill).logits
            value = distillation_loss(out.logits, teacher_logits, training.flism_kd_temperature)
            terms.append(LossTerm("flism_kd", value, training.flism_lambda_kd))
        return terms

    def _supcon(self, out: ModelOutput, labels: Tensor,
                batch: tuple[tuple[Any, ...], dict[str, Any]] | None) -> Tensor:
        training = self.local.config.training
        names = self.local.model.modalities
        if training.flism_views == "modalities":
            views = torch.stack([out.s, *(out.u[m] for m in names)])
            valid = torch.stack([torch.ones_like(labels, dtype=torch.bool), *(out.present[m] for m in names)])
        else:
            if batch is None:
                raise RuntimeError("flism: the training batch was not captured")
            inputs, _, fill = _batch_arguments(*batch)
            keep, augmented = dropout_view_masks(out.present, names)
            if not bool(augmented.any()):  # no sample has two modalities: nothing to contrast (the paper's code
                return zero_like_graph(out.s)  # skips SupCon on a client with one modality)
            noisy = {m: x + training.flism_noise_std * torch.randn_like(x) if x.is_floating_point() else x
                     for m, x in inputs.items()}
            second = self.local.model(noisy, keep, fill=fill)
            views = torch.stack([out.s, second.s])
            valid = torch.stack([torch.ones_like(augmented), augmented])
        return supcon_loss(views, labels, valid, training.flism_temperature, training.flism_base_temperature)

    def local_prototypes(self, data: MultimodalArrays) -> dict[str, LocalPrototypes]:
        """No prototypes; called once training ends, so it removes the hook and measures the entropy here."""
        self._release()
        self.teacher = None
        model = self.local.model
        usable = present_matrix(model, data).any(axis=1)
        logits = embed(model, data).logits[usable]
        entropy = float(prediction_entropy(torch.from_numpy(np.ascontiguousarray(logits))).mean())
        self.entropy = entropy if math.isfinite(entropy) else None
        return {}

    def round_metrics(self) -> dict[str, float]:
        return {} if self.entropy is None else {FLISM_ENTROPY_METRIC: self.entropy}
