"""Classification metrics in numpy (no torch, no scikit-learn): accuracy, macro-F1, UAR, one-vs-rest AUC.

Every metric is a fraction in [0, 1]. Macro-F1 and UAR average over the classes that occur in the labels
*or* the predictions (scikit-learn's default for ``average="macro"``, which FedMultimodal reports), so a
class the model predicts but that never occurs counts with F1 = recall = 0.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] int64 counts, rows = true class, columns = predicted class."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    if y_true.size and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _seen_classes(cm: np.ndarray) -> np.ndarray:
    return (cm.sum(axis=0) + cm.sum(axis=1)) > 0


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = np.asarray(y_true)
    return float(np.mean(y_true == np.asarray(y_pred))) if y_true.size else 0.0


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean over seen classes of ``2 TP / (2 TP + FP + FN)``."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    seen = _seen_classes(cm)
    if not seen.any():
        return 0.0
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # = 2TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[seen].mean())


def uar(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted average recall: mean over seen classes of ``TP / (TP + FN)`` (0 for a class never true)."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    seen = _seen_classes(cm)
    if not seen.any():
        return 0.0
    support = cm.sum(axis=1).astype(np.float64)
    recall = np.divide(np.diag(cm), support, out=np.zeros_like(support), where=support > 0)
    return float(recall[seen].mean())


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(x)]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC via the Mann-Whitney statistic (ties count 1/2); None without both positives and negatives."""
    positive = np.asarray(positive, bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(np.asarray(scores, np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """One-vs-rest ROC AUC averaged over the classes that have positives and negatives (None if none has).

    For two classes this equals the AUC of the class-1 score (scikit-learn's binary ``roc_auc_score``).
    """
    y_true = np.asarray(y_true, np.int64)
    aucs = [a for k in range(probs.shape[1]) if (a := binary_auc(y_true == k, probs[:, k])) is not None]
    return float(np.mean(aucs)) if aucs else None


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """accuracy, macro_f1, uar and (when defined) auc from labels [N] and class probabilities [N, C]."""
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(f"probs must be [N, C] with N = {len(y_true)}; got {list(probs.shape)}")
    num_classes = probs.shape[1]
    y_pred = probs.argmax(axis=1)
    out = {
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred, num_classes),
        "uar": uar(y_true, y_pred, num_classes),
    }
    auc = macro_auc_ovr(y_true, probs)
    if auc is not None:
        out["auc"] = auc
    return out
