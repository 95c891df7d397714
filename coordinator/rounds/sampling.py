"""Reproducible participant sampling and per-client seeds (docs/design.md contract 7).

Seeds derive from the federation seed and the round number with sha256, so they do not depend on numpy's or
Python's hashing. Candidates are ordered by client name (then id): with the same names, seed and live set, a
rerun samples the same clients.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

SEED_MASK = 2**63 - 1


def derive_seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & SEED_MASK


def round_seed(federation_seed: int, number: int) -> int:
    return derive_seed("mfcpl-round", federation_seed, number)


def client_seed(round_seed_value: int, client_name: str) -> int:
    return derive_seed("mfcpl-client", round_seed_value, client_name)


def sample_participants(candidates: Sequence[str], k: int, seed: int) -> list[str]:
    """``min(k, len(candidates))`` distinct candidates, in candidate order."""
    if k >= len(candidates):
        return list(candidates)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(candidates), size=k, replace=False))
    return [candidates[i] for i in chosen]
