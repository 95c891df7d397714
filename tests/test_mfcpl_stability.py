"""MFCPL's prototype pull stays bounded far from the prototypes (docs/algorithm.md, "Stability of the prototype pull").

The plain squared CMPR distance gives a pull that grows with the distance: with features far from their
prototypes (unscaled inputs, a diverging complete client whose prototypes everyone is pulled to) it swamps
the cross-entropy. ``training.cmpr_huber_delta`` (default 10) caps the per-sample pull; ``None`` is the old term.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from client_sdk.algorithms import LocalRound, client_algorithm
from client_sdk.data import MultimodalArrays
from client_sdk.losses import cmpr_loss, pseudo_huber
from client_sdk.model import build_model
from client_sdk.prototypes import batch_tensors
from client_sdk.torch_io import prototypes_to_torch
from mfcpl.wire.schemas import FederationCreate, TrainingConfig
from mfcpl.wire.tensors import PrototypeTable

DELTA = 10.0


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _batch(scale: float, b: int = 8, d: int = 64, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(b, d, generator=g) * scale).requires_grad_(True)
    labels = torch.arange(b) % 3
    protos = torch.randn(3, d, generator=g)
    return s, labels, protos, torch.ones(3, dtype=torch.bool)


def test_default_is_the_bounded_pull_and_none_restores_the_plain_distance():
    assert TrainingConfig().cmpr_huber_delta == DELTA
    assert TrainingConfig(cmpr_huber_delta=None).cmpr_huber_delta is None
    with pytest.raises(ValidationError):
        TrainingConfig(cmpr_huber_delta=0.0)
    s, labels, protos, cov = _batch(3.0)
    plain = ((s - protos[labels]) ** 2).mean(dim=1).mean()
    assert torch.allclose(cmpr_loss(s, labels, protos, cov, per_dimension=True, huber_delta=None), plain)


def test_pseudo_huber_matches_the_squared_distance_near_the_target():
    d = torch.tensor([0.0, 1e-3, 0.3, 1.0, 5.0])
    out = pseudo_huber(d, DELTA)
    assert out[0] == 0
    # relative error about d / (4 delta^2): under 1.5 % up to d = 5
    assert torch.allclose(out, d, rtol=0.015, atol=0)
    assert torch.equal(pseudo_huber(d, None), d)
    with pytest.raises(ValueError):
        pseudo_huber(d, 0.0)


def test_pseudo_huber_is_increasing_and_grows_like_a_distance_not_its_square():
    d = torch.logspace(-3, 8, 50)
    out = pseudo_huber(d, DELTA)
    assert bool((out[1:] > out[:-1]).all())
    assert float(out[-1]) < 2 * DELTA * math.sqrt(1e8) * 1.001  # ~ 2 delta sqrt(d), not d = 1e8


@pytest.mark.parametrize("scale", [1e2, 1e4, 1e6, 1e12])
def test_cmpr_gradient_stays_bounded_and_finite_for_huge_embeddings(scale):
    s, labels, protos, cov = _batch(scale)
    loss = cmpr_loss(s, labels, protos, cov, per_dimension=True, huber_delta=DELTA)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    b, d = s.shape
    bound = 2 * DELTA / (b * math.sqrt(d))  # per-sample gradient norm of mean_i rho(||s_i - P||^2 / d)
    assert float(grad.norm(dim=1).max()) <= bound * (1 + 1e-4)
    # the plain squared distance: the gradient grows with the scale (this is what diverged)
    old = cmpr_loss(s, labels, protos, cov, per_dimension=True, huber_delta=None)
    (old_grad,) = torch.autograd.grad(old, s)
    assert float(old_grad.norm(dim=1).max()) > 10 * bound


def test_small_distances_give_the_same_term_and_gradient_as_before():
    s, labels, protos, cov = _batch(1.0)  # per-dim distance ~2, well inside delta^2 = 100
    new = cmpr_loss(s, labels, protos, cov, per_dimension=True, huber_delta=DELTA)
    old = cmpr_loss(s, labels, protos, cov, per_dimension=True, huber_delta=None)
    (g_new,) = torch.autograd.grad(new, s)
    (g_old,) = torch.autograd.grad(old, s)
    assert abs(float(new.detach()) / float(old.detach()) - 1) < 0.01
    assert torch.allclose(g_new, g_old, rtol=0.02, atol=1e-6)


def _config(delta: float | None) -> FederationCreate:
    return FederationCreate.model_validate({
        "name": "stab", "algorithm": "mfcpl", "num_classes": 3,
        "modalities": [{"name": "a", "kind": "vector", "shape": [12]}, {"name": "b", "kind": "vector", "shape": [10]}],
        "model": {"hidden_dim": 16, "proj_dim": 16, "attention_dim": 16, "dropout": 0.0},
        "training": {"cmpr_huber_delta": delta},
    })


@pytest.mark.parametrize("delta", [None, DELTA])
def test_far_prototypes_cannot_swamp_the_cross_entropy_in_the_mfcpl_client(delta):
    """Prototypes 1000x the model's features (a diverged complete client): the CMPR gradient on the weights
    next to CE's. Unbounded it is thousands of times CE's; bounded it stays of CE's order."""
    cfg = _config(delta)
    model = build_model(cfg, seed=0)
    rng = np.random.default_rng(0)
    n = 24
    data = MultimodalArrays(
        inputs={m: rng.standard_normal((n, k)).astype(np.float32) for m, k in (("a", 12), ("b", 10))},
        present={"a": np.ones(n, bool), "b": np.ones(n, bool)},
        labels=(np.arange(n) % 3).astype(np.int64),
    )
    width = cfg.model.classifier_hidden
    far = PrototypeTable(rng.standard_normal((3, width)).astype(np.float32) * 1000.0, np.ones(3, np.float32))
    tables = {level: PrototypeTable(far.vectors.copy(), far.counts) for level in ("shared", "a", "b")}
    protos = prototypes_to_torch(tables, 3)
    algorithm = client_algorithm("mfcpl")(LocalRound(model, cfg, protos, None))
    inputs, present = batch_tensors(model, data, np.arange(n))
    labels = torch.from_numpy(data.labels)
    out = model(inputs, present)
    terms = {t.name: t for t in algorithm.loss_terms(out, labels)}
    params = [p for p in model.parameters() if p.requires_grad]

    def grad_norm(value: torch.Tensor) -> float:
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        return float(torch.sqrt(sum((g**2).sum() for g in grads if g is not None)))

    ce = grad_norm(torch.nn.functional.cross_entropy(out.logits, labels))
    cmpr = grad_norm(terms["cmpr"].weight * terms["cmpr"].value)
    assert math.isfinite(cmpr)
    if delta is None:
        assert cmpr > 100 * ce  # the old term: the pull swamps CE
    else:
        assert cmpr < 100 * ce
        assert float(terms["cmpr"].value.detach()) < 2 * DELTA * 1000 * 5  # ~ 2 delta sqrt(d), not d ~ 1e6
