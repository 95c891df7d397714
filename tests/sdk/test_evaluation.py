"""The numpy metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from client_sdk.evaluation import (
    accuracy,
    binary_auc,
    classification_metrics,
    confusion_matrix,
    macro_auc_ovr,
    macro_f1,
    uar,
)


def test_confusion_matrix_and_accuracy():
    cm = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert accuracy(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])) == 0.5
    with pytest.raises(ValueError, match="labels"):
        confusion_matrix(np.array([0, 3]), np.array([0, 0]), 3)


def test_macro_f1_and_uar_hand_computed():
    y_true = np.array([0, 0, 1, 2])
    y_pred = np.array([0, 1, 1, 1])
    # class 0: TP 1, FP 0, FN 1 -> F1 2/3; class 1: TP 1, FP 2, FN 0 -> 2/4; class 2: 0
    assert macro_f1(y_true, y_pred, 3) == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    # recalls 1/2, 1, 0
    assert uar(y_true, y_pred, 3) == pytest.approx(0.5)


def test_unseen_class_is_not_averaged_but_predicted_only_class_is():
    # class 3 never occurs: excluded; class 2 only predicted: included with F1 = recall = 0
    y_true = np.array([0, 1, 1])
    y_pred = np.array([0, 1, 2])
    assert macro_f1(y_true, y_pred, 4) == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert uar(y_true, y_pred, 4) == pytest.approx((1 + 0.5 + 0) / 3)


def test_binary_auc_with_ties_and_undefined_cases():
    # positives scores 0.9, 0.5; negatives 0.5, 0.1 -> pairs: (0.9>0.5), (0.9>0.1), (0.5=0.5 -> 1/2), (0.5>0.1)
    assert binary_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.5, 0.5, 0.1])) == pytest.approx(3.5 / 4)
    assert binary_auc(np.array([1, 1]), np.array([0.1, 0.2])) is None


def test_macro_auc_ovr_and_two_class_equivalence():
    y = np.array([0, 1, 1, 0, 1])
    p1 = np.array([0.2, 0.7, 0.4, 0.5, 0.9])
    probs = np.stack([1 - p1, p1], axis=1)
    assert macro_auc_ovr(y, probs) == pytest.approx(binary_auc(y == 1, p1))
    perfect = np.eye(3)[[0, 1, 2, 1]]
    assert macro_auc_ovr(np.array([0, 1, 2, 1]), perfect) == 1.0


def test_classification_metrics_keys_and_missing_auc():
    m = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert m == {"accuracy": 1.0, "macro_f1": 1.0, "uar": 1.0, "auc": 1.0}
    only_one_class = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert "auc" not in only_one_class and only_one_class["accuracy"] == 0.5
