"""Alembic migrations of the coordinator schema (run by `mfcpl db upgrade` or on app start)."""
