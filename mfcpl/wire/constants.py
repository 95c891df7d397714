"""Names and media types both sides of the wire agree on."""

from __future__ import annotations

API_PREFIX = "/v1"
PROBLEM_CONTENT_TYPE = "application/problem+json"
SAFETENSORS_CONTENT_TYPE = "application/vnd.safetensors"
IDEMPOTENCY_HEADER = "Idempotency-Key"

SHARED_LEVEL = "shared"
"""The prototype level of the fused embedding (the complete prototypes); every other level is a modality name."""
