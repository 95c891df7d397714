"""Client updates: streamed ingestion, validation, idempotency."""
