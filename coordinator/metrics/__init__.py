"""Per-round metrics and evaluations."""
