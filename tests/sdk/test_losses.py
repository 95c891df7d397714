"""Each loss against hand-computed values on tiny tensors, plus masking, NaN-safety and gradient flow."""

from __future__ import annotations

import math

import pytest
import torch

from client_sdk.losses import cma_loss, cmpc_loss, cmpr_loss, fedproto_loss, fedprox_term, prototype_clip_loss

P = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # class 2 has no prototype (zero row)
COV = torch.tensor([True, True, False])


def test_cmpr_hand_computed_and_uncovered_class_ignored():
    s = torch.tensor([[1.0, 1.0], [0.0, 3.0], [5.0, 5.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 2])
    loss = cmpr_loss(s, labels, P, COV)
    # sample 0: |(0,1)|^2 = 1; sample 1: |(0,2)|^2 = 4; sample 2 has no prototype -> mean (1 + 4) / 2
    assert loss.item() == pytest.approx(2.5)
    loss.backward()
    assert torch.equal(s.grad[2], torch.zeros(2))
    assert torch.allclose(s.grad[0], torch.tensor([0.0, 1.0]))  # 2 * (s - P) / 2 samples


def test_cmpr_mask_and_empty_selection_gives_zero_with_grad():
    s = torch.tensor([[1.0, 1.0], [0.0, 3.0]], requires_grad=True)
    labels = torch.tensor([0, 1])
    assert cmpr_loss(s, labels, P, COV, mask=torch.tensor([False, True])).item() == pytest.approx(4.0)
    empty = cmpr_loss(s, torch.tensor([2, 2]), P, COV)
    assert empty.item() == 0.0 and empty.requires_grad
    empty.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_cmpr_pushes_no_gradient_into_prototypes():
    protos = P.clone().requires_grad_(True)
    s = torch.tensor([[1.0, 1.0]], requires_grad=True)
    cmpr_loss(s, torch.tensor([0]), protos, COV).backward()
    assert protos.grad is None
    assert s.grad is not None


def test_cmpc_shared_hand_computed_missing_modality_contributes_nothing():
    tau = 0.5
    u = {
        "a": torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True),
        "b": torch.tensor([[1.0, 1.0], [7.0, -3.0]], requires_grad=True),
    }
    present = {"a": torch.tensor([True, True]), "b": torch.tensor([True, False])}
    labels = torch.tensor([0, 1])
    loss = cmpc_loss(u, present, labels, {"shared": P}, {"shared": COV}, tau)
    # (0,a): cos to P0 = 1, P1 = 0 -> -log(e^2 / (e^2 + e^0)); (1,a): same by symmetry;
    # (0,b): cos 1/sqrt2 to both -> log 2; (1,b) is missing. Class 2 is not a negative.
    term = -math.log(math.exp(2) / (math.exp(2) + 1))
    expected = (2 * term + math.log(2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.equal(u["b"].grad[1], torch.zeros(2))
    assert u["b"].grad[0].abs().sum() > 0


def test_cmpc_modality_target_uses_other_modalities_prototypes():
    u = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[0.0, 1.0]])}
    present = {"a": torch.tensor([True]), "b": torch.tensor([True])}
    protos = {"a": torch.tensor([[0.0, 1.0], [1.0, 0.0]]), "b": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    cov = {"a": torch.tensor([True, True]), "b": torch.tensor([True, True])}
    loss = cmpc_loss(u, present, torch.tensor([0]), protos, cov, tau=1.0, target="modality")
    # u^a vs P^b: cos (1, 0) -> -log(e/(e+1)); u^b vs P^a: cos (1, 0) -> same
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)), rel=1e-6)


def test_cmpc_no_nan_when_label_has_no_prototype_and_zero_when_nothing_present():
    u = {"a": torch.zeros(2, 2, requires_grad=True)}
    labels = torch.tensor([2, 2])
    loss = cmpc_loss(u, {"a": torch.tensor([True, True])}, labels, {"shared": P}, {"shared": COV}, 0.07)
    assert loss.item() == 0.0 and loss.requires_grad
    none_present = cmpc_loss(u, {"a": torch.tensor([False, False])}, torch.tensor([0, 1]),
                             {"shared": P}, {"shared": COV}, 0.07)
    assert none_present.item() == 0.0
    # zero embedding for a covered class: finite (cos = 0 with every prototype -> log 2)
    zero = cmpc_loss(u, {"a": torch.tensor([True, False])}, torch.tensor([0, 1]), {"shared": P}, {"shared": COV}, 1.0)
    assert zero.item() == pytest.approx(math.log(2))
    zero.backward()
    assert torch.isfinite(u["a"].grad).all()


@pytest.mark.parametrize(
    ("distance", "expected"),
    [("l2", (9 + 16) / 2 + 0), ("l1", 7 / 2), ("smooth_l1", (2.5 + 3.5) / 2)],
)
def test_cma_distances_hand_computed(distance, expected):
    # sample 0 has a, b (diff (3, 4)); sample 1 has a, b, c with a = b = c -> 0; sample 2 has only a.
    u = {
        "a": torch.tensor([[3.0, 4.0], [1.0, 1.0], [9.0, 9.0]]),
        "b": torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]),
        "c": torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]),
    }
    present = {
        "a": torch.tensor([True, True, True]),
        "b": torch.tensor([True, True, False]),
        "c": torch.tensor([False, True, False]),
    }
    # mean over the two samples with >= 2 modalities; sample 0 contributes D((3,4), (0,0))
    assert cma_loss(u, present, distance).item() == pytest.approx(expected)


def test_cma_counts_each_pair_once_over_three_modalities():
    u = {"a": torch.tensor([[1.0]]), "b": torch.tensor([[0.0]]), "c": torch.tensor([[2.0]])}
    present = {k: torch.tensor([True]) for k in u}
    # pairs ab: 1, ac: 1, bc: 4
    assert cma_loss(u, present, "l2").item() == pytest.approx(6.0)


def test_cma_missing_modality_gets_no_gradient_and_single_modality_batch_is_zero():
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0]], requires_grad=True)
    b = torch.tensor([[0.0, 0.0], [5.0, 5.0]], requires_grad=True)
    present = {"a": torch.tensor([True, True]), "b": torch.tensor([True, False])}
    loss = cma_loss({"a": a, "b": b}, present)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert torch.equal(b.grad[1], torch.zeros(2)) and torch.equal(a.grad[1], torch.zeros(2))
    lone = cma_loss({"a": a, "b": b}, {"a": torch.tensor([True, True]), "b": torch.tensor([False, False])})
    assert lone.item() == 0.0 and lone.requires_grad


def test_cma_rejects_unknown_distance():
    u = {"a": torch.ones(1, 2), "b": torch.zeros(1, 2)}
    with pytest.raises(ValueError, match="distance"):
        cma_loss(u, {"a": torch.tensor([True]), "b": torch.tensor([True])}, "cosine")  # type: ignore[arg-type]


def test_fedprox_term_hand_computed_and_global_detached():
    w = [torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([[3.0]], requires_grad=True)]
    g = [torch.tensor([0.0, 0.0], requires_grad=True), torch.tensor([[1.0]], requires_grad=True)]
    term = fedprox_term(w, g, mu=0.1)
    assert term.item() == pytest.approx(0.05 * (1 + 4 + 4))
    term.backward()
    assert torch.allclose(w[0].grad, 0.1 * torch.tensor([1.0, 2.0]))
    assert g[0].grad is None


def test_fedproto_loss_is_mse_over_covered_samples():
    f = torch.tensor([[1.0, 1.0], [0.0, 3.0], [8.0, 8.0]], requires_grad=True)
    loss = fedproto_loss(f, torch.tensor([0, 1, 2]), P, COV)
    assert loss.item() == pytest.approx((1 + 4) / 4)  # squared errors 0,1 and 0,4 over 2 samples x 2 dims
    assert fedproto_loss(f, torch.tensor([2, 2, 2]), P, COV).item() == 0.0


def test_prototype_clip_loss_uses_own_modality_prototypes():
    u = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[1.0, 0.0]])}
    present = {"a": torch.tensor([True]), "b": torch.tensor([False])}
    protos = {"a": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    cov = {"a": torch.tensor([True, True])}
    loss = prototype_clip_loss(u, present, torch.tensor([0]), protos, cov, tau=1.0)
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)), rel=1e-6)


def test_wholly_absent_modality_stays_out_of_the_graph():
    # a zero gradient would still let weight decay and momentum move the absent modality's head
    a = torch.tensor([[1.0, 0.0]], requires_grad=True)
    b = torch.tensor([[0.0, 1.0]], requires_grad=True)
    present = {"a": torch.tensor([True]), "b": torch.tensor([False])}
    u = {"a": a, "b": b}
    total = cma_loss(u, present) + cmpc_loss(u, present, torch.tensor([0]), {"shared": P}, {"shared": COV}, 0.5)
    total.backward()
    assert b.grad is None and a.grad is not None


def test_cmpr_per_dimension_is_the_sum_divided_by_the_width():
    s = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    labels = torch.tensor([0, 1])
    summed = cmpr_loss(s, labels, P, COV)
    assert cmpr_loss(s, labels, P, COV, per_dimension=True).item() == pytest.approx(summed.item() / 2)
