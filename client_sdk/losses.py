"""MFCPL losses and the baselines' extra terms, as small pure functions of tensors.

Conventions shared by every function here:

* ``labels`` is ``[B]`` int64; ``present[m]`` is ``[B]`` bool (the sample has modality m).
* Prototype tables are ``[C, d]`` tensors with a ``[C]`` bool ``coverage`` mask (False: no prototype
  for that class). Prototypes are constants received from the coordinator: every function detaches
  them, so no gradient ever reaches them.
* A term that has nothing to average (no covered class in the batch, no present modality, no sample
  with two modalities) returns an exact ``0`` that is still connected to the graph of its inputs, so
  ``loss.backward()`` works and adds nothing.
* A class without a prototype is never a target and never a negative: its row is ignored, so an
  all-zero placeholder row can never produce NaN.

See docs/algorithm.md for the formulas as implemented and the choices where the paper is silent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mfcpl.wire.constants import SHARED_LEVEL

Distance = Literal["l2", "l1", "smooth_l1"]
CmpcTarget = Literal["shared", "modality"]

_MASKED_LOGIT = -1e4  # logit of a class without prototype: exp() underflows to 0, never NaN


def zero_like_graph(*tensors: Tensor) -> Tensor:
    """A scalar 0 that depends on ``tensors`` (so backward() works and yields zero gradients).

    With no tensor, a leaf 0 that requires grad (backward() still works).
    """
    if not tensors:
        return torch.zeros((), requires_grad=True)
    total = torch.zeros((), device=tensors[0].device, dtype=tensors[0].dtype)
    for t in tensors:
        total = total + t.sum() * 0.0
    return total


def _present_only(u: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> list[Tensor]:
    """The embeddings of modalities present in at least one row: an absent modality's head must stay out of
    the graph (a zero gradient would still let weight decay and momentum move its weights)."""
    return [u[m] for m in u if bool(present[m].any())]


def pseudo_huber(d: Tensor, delta: float | None) -> Tensor:
    """Robust version of a squared distance ``d`` (elementwise): ``2 delta^2 (sqrt(1 + d / delta^2) - 1)``.

    Equal to ``d`` to first order for ``d << delta^2`` (the same value and gradient near the target), and
    growing like ``2 delta sqrt(d)`` beyond: if ``d = ||x - t||^2 / k`` then the gradient wrt ``x`` has
    norm at most ``2 delta / sqrt(k)`` however far ``x`` is from ``t`` (the squared distance's gradient grows
    without bound). ``delta=None`` returns ``d`` unchanged.
    """
    if delta is None:
        return d
    if delta <= 0:
        raise ValueError("delta must be positive (or None for the plain squared distance)")
    c = float(delta) ** 2
    return 2.0 * c * (torch.sqrt(1.0 + d / c) - 1.0)


def cmpr_loss(s: Tensor, labels: Tensor, prototypes: Tensor, coverage: Tensor, mask: Tensor | None = None,
              per_dimension: bool = False, huber_delta: float | None = None) -> Tensor:
    """Cross-modal prototype regularization (modality-shared level).

    ``L_CMPR = mean_{i in S} rho(|| s_i - P^{y_i} ||_2^2)`` where ``S`` holds the samples (selected by ``mask``,
    default all) whose class has a prototype. ``s`` is ``[B, d]`` (the fused embedding in prototype space),
    ``prototypes`` ``[C, d]``. The prototypes are detached: the pull moves only ``s``. With
    ``per_dimension`` the squared distance is divided by d (FedProto's ``MSELoss`` scale), so the weight
    means the same whatever the width of an unbounded space such as the classifier's penultimate layer.
    ``rho`` is the identity (``huber_delta=None``, the paper's squared distance) or :func:`pseudo_huber`
    with ``huber_delta``: quadratic up to about ``huber_delta^2``, then a pull of bounded strength, so a
    sample (or a whole client) far from the prototypes cannot dominate the update (docs/algorithm.md,
    "Stability of the prototype pull").
    """
    select = coverage[labels]
    if mask is not None:
        select = select & mask
    if not bool(select.any()):
        return zero_like_graph(s)
    target = prototypes.detach()[labels[select]]
    squared = (s[select] - target).pow(2)
    distance = squared.mean(dim=1) if per_dimension else squared.sum(dim=1)
    return pseudo_huber(distance, huber_delta).mean()


def prototype_contrast(
    u: Tensor, labels: Tensor, prototypes: Tensor, coverage: Tensor, tau: float
) -> tuple[Tensor, int]:
    """Sum over rows of ``-log softmax_k(cos(u_i, P^k) / tau)[y_i]`` over the covered classes k, and the row count.

    Rows whose label has no prototype are dropped. Returns ``(sum, n)`` so callers can average over
    several modalities at once.
    """
    select = coverage[labels]
    if not bool(select.any()):
        return zero_like_graph(u), 0
    u_sel = F.normalize(u[select], dim=1, eps=1e-8)
    protos = F.normalize(prototypes.detach(), dim=1, eps=1e-8)
    logits = (u_sel @ protos.T) / tau
    logits = logits.masked_fill(~coverage.unsqueeze(0), _MASKED_LOGIT)
    return F.cross_entropy(logits, labels[select], reduction="sum"), int(select.sum())


def cmpc_loss(
    u: Mapping[str, Tensor],
    present: Mapping[str, Tensor],
    labels: Tensor,
    prototypes: Mapping[str, Tensor],
    coverage: Mapping[str, Tensor],
    tau: float,
    target: CmpcTarget = "shared",
) -> Tensor:
    """Cross-modal prototype contrastive loss (modality-specific level), temperature ``tau``.

    ``target="shared"``: ``L = mean_{(i, m): m in A_i, P^{y_i} exists} -log( exp(cos(u_i^m, P^{y_i})/tau) /
    sum_{k covered} exp(cos(u_i^m, P^k)/tau) )`` with ``P = prototypes["shared"]``.

    ``target="modality"``: each ``u_i^m`` is contrasted with the prototypes of every *other* modality n
    (``prototypes[n]``, the level named after n) that the table set holds; the mean runs over the
    (i, m, n) triples.

    ``u[m]`` is ``[B, d]``; rows of absent modalities contribute nothing (their encoders get no gradient
    from this term).
    """
    total: Tensor | None = None
    count = 0
    for m, u_m in u.items():
        rows = present[m]
        if not bool(rows.any()):
            continue
        levels = [SHARED_LEVEL] if target == "shared" else [n for n in u if n != m]
        for level in levels:
            if level not in prototypes:
                continue
            part, n = prototype_contrast(u_m[rows], labels[rows], prototypes[level], coverage[level], tau)
            total = part if total is None else total + part
            count += n
    if total is None or count == 0:
        return zero_like_graph(*_present_only(u, present))
    return total / count


def _pair_distance(a: Tensor, b: Tensor, distance: Distance) -> Tensor:
    diff = a - b
    if distance == "l2":
        return diff.pow(2).sum(dim=1)
    if distance == "l1":
        return diff.abs().sum(dim=1)
    if distance == "smooth_l1":
        return F.smooth_l1_loss(a, b, reduction="none", beta=1.0).sum(dim=1)
    raise ValueError(f"unknown CMA distance {distance!r}; expected l2, l1 or smooth_l1")


def cma_loss(u: Mapping[str, Tensor], present: Mapping[str, Tensor], distance: Distance = "l2") -> Tensor:
    """Cross-modal alignment.

    ``L_CMA = mean_{i: |A_i| >= 2} sum_{m < n, m, n in A_i} D(u_i^m, u_i^n)`` with ``D`` the squared L2
    distance (``l2``), the L1 distance (``l1``) or the summed smooth-L1 (Huber, beta 1; ``smooth_l1``).
    Each unordered pair counts once. Samples with fewer than two modalities are not in the mean.
    """
    names = [m for m in u if bool(present[m].any())]
    eligible = torch.stack([present[m] for m in names]).sum(dim=0) >= 2 if len(names) >= 2 else None
    if eligible is None or not bool(eligible.any()):
        return zero_like_graph(*_present_only(u, present))
    per_sample = torch.zeros(eligible.shape[0], device=u[names[0]].device, dtype=u[names[0]].dtype)
    for i, m in enumerate(names):
        for n in names[i + 1 :]:
            both = present[m] & present[n]
            if bool(both.any()):
                per_sample = per_sample + torch.where(both, _pair_distance(u[m], u[n], distance), 0.0)
    return per_sample[eligible].mean()


def fedprox_term(params: Iterable[Tensor], global_params: Iterable[Tensor], mu: float) -> Tensor:
    """FedProx proximal term ``(mu / 2) * sum_j || w_j - w_j^global ||^2`` (global weights detached)."""
    pairs = list(zip(params, global_params, strict=True))
    if not pairs:
        raise ValueError("fedprox_term needs at least one parameter")
    total = zero_like_graph(pairs[0][0])
    for w, w_global in pairs:
        total = total + (w - w_global.detach()).pow(2).sum()
    return 0.5 * mu * total


def fedproto_loss(features: Tensor, labels: Tensor, prototypes: Tensor, coverage: Tensor) -> Tensor:
    """FedProto regulariser: ``MSE(f_i, P^{y_i})`` averaged over samples whose class has a prototype.

    As ``torch.nn.MSELoss`` in FedProto's code: the mean over the selected samples *and* the feature
    dimensions, ``mean_{i in S} (1/d) || f_i - P^{y_i} ||^2``.
    """
    select = coverage[labels]
    if not bool(select.any()):
        return zero_like_graph(features)
    return F.mse_loss(features[select], prototypes.detach()[labels[select]])


def prototype_clip_loss(
    u: Mapping[str, Tensor],
    present: Mapping[str, Tensor],
    labels: Tensor,
    prototypes: Mapping[str, Tensor],
    coverage: Mapping[str, Tensor],
    tau: float,
) -> Tensor:
    """PmcmFL-style contrast of each present modality embedding with *its own* modality's prototypes.

    ``mean_{(i, m): m in A_i} -log softmax_k(cos(u_i^m, P^{m,k}) / tau)[y_i]`` over covered classes k.
    """
    total: Tensor | None = None
    count = 0
    for m, u_m in u.items():
        rows = present[m]
        if m not in prototypes or not bool(rows.any()):
            continue
        part, n = prototype_contrast(u_m[rows], labels[rows], prototypes[m], coverage[m], tau)
        total = part if total is None else total + part
        count += n
    if total is None or count == 0:
        return zero_like_graph(*_present_only(u, present))
    return total / count


def batch_prototype_clip_loss(features: Tensor, labels: Tensor, prototypes: Tensor, coverage: Tensor,
                              scale: float) -> Tensor:
    """In-batch CLIP contrast of features with their class prototypes (PmcmFL's authors' code, ``ClipLossHalf``).

    Row i's logits against row j are ``scale * <f_i, P^{y_j}>`` (a plain dot product, no normalisation), the
    target is j = i, over the rows whose class has a prototype. Rows of the same class share a prototype, so
    this equals ``-scale <f_i, P^{y_i}> + logsumexp_k (scale <f_i, P^k> + log n_k)`` over the covered classes
    k of the batch, ``n_k`` rows each: computed that way, without the [B, B] matrix.
    """
    select = coverage[labels]
    if not bool(select.any()):
        return zero_like_graph(features)
    f = features[select]
    y = labels[select]
    counts = torch.bincount(y, minlength=prototypes.shape[0]).to(f.dtype)
    logits = scale * f @ prototypes.detach().T  # [n, C]
    shifted = logits + torch.log(counts.clamp(min=1)).unsqueeze(0)
    shifted = shifted.masked_fill((counts == 0).unsqueeze(0), _MASKED_LOGIT)
    own = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    return (torch.logsumexp(shifted, dim=1) - own).mean()
