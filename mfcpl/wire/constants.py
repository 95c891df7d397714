"""Names and media types both sides of the wire agree on."""

from __future__ import annotations

API_PREFIX = "/v1"
PROBLEM_CONTENT_TYPE = "application/problem+json"
SAFETENSORS_CONTENT_TYPE = "application/vnd.safetensors"
IDEMPOTENCY_HEADER = "Idempotency-Key"

SHARED_LEVEL = "shared"
"""The prototype level of the fused embedding (the complete prototypes); every other level is a modality name."""

FEDNOVA_NORM_METRIC = "fednova_norm"
"""FedNova: the update metric carrying the client's normalising factor ||a_i||_1 (its effective local steps)."""

MAX_METRIC_KEY_LENGTH = 128
"""The longest metric name accepted (update metadata and evaluations)."""
MAX_METRICS = 256
"""The most metrics one update or one evaluation may carry."""


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds NUL or another C0/C1 control character (refused in names and metric keys)."""
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)
