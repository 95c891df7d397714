"""Shared test helpers: a real coordinator process, federation builders, known tensors."""
