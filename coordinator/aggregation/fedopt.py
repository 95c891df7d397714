"""FedOpt: the averaged client update applied as a pseudo-gradient with server momentum SGD.

The exact rule (docs/method.md, baseline "FedOpt"), per float tensor, with beta = ``server_momentum`` and
eta = ``server_lr``::

    g     = global - averaged            # pseudo-gradient: minus the mean client step
    m_new = beta * m + g                 # m_new = g on the first round (momentum None)
    new   = global - eta * m_new

With eta = 1 and beta = 0 this is plain FedAvg (new = averaged). Float tensors are computed in float32
(float64 for float64 tensors) and returned in the global tensor's dtype; the momentum is kept in that
computation dtype. Non-float tensors (integer counters such as ``num_batches_tracked``, boolean masks)
have no gradient: they take the averaged value and carry no momentum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _check_same_tensors(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray], what: str) -> None:
    if set(reference) != set(other):
        missing = sorted(set(reference) - set(other))
        extra = sorted(set(other) - set(reference))
        raise ValueError(f"{what}: tensor names differ from the global model (missing {missing}, unexpected {extra})")
    for name, ref in reference.items():
        if np.shape(other[name]) != np.shape(ref):
            raise ValueError(
                f"{what}: tensor {name!r} has shape {list(np.shape(other[name]))}, expected {list(np.shape(ref))}"
            )


def fedopt_step(
    global_weights: Mapping[str, np.ndarray],
    averaged: Mapping[str, np.ndarray],
    momentum: Mapping[str, np.ndarray] | None,
    server_lr: float,
    server_momentum: float,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One server step; returns ``(new_weights, new_momentum)``. Inputs are never modified."""
    if not (math.isfinite(server_lr) and server_lr > 0):
        raise ValueError(f"server_lr must be a finite number > 0, got {server_lr!r}")
    if not (math.isfinite(server_momentum) and 0 <= server_momentum < 1):
        raise ValueError(f"server_momentum must be in [0, 1), got {server_momentum!r}")
    _check_same_tensors(global_weights, averaged, "averaged")
    float_names = [n for n, t in global_weights.items() if np.asarray(t).dtype.kind == "f"]
    if momentum is not None:
        _check_same_tensors({n: global_weights[n] for n in float_names}, momentum, "momentum")

    new_weights: dict[str, np.ndarray] = {}
    new_momentum: dict[str, np.ndarray] = {}
    for name, current in global_weights.items():
        current = np.asarray(current)
        if current.dtype.kind != "f":
            new_weights[name] = np.array(averaged[name], dtype=current.dtype)
            continue
        dtype = _compute_dtype(current.dtype)
        m = np.subtract(current, averaged[name], dtype=dtype)  # g
        if momentum is not None:
            m += dtype.type(server_momentum) * np.asarray(momentum[name], dtype=dtype)
        step = m * dtype.type(server_lr)
        new_weights[name] = np.subtract(current, step, dtype=dtype).astype(current.dtype, copy=False)
        new_momentum[name] = m
    return new_weights, new_momentum
