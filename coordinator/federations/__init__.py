"""Federations: configuration and status."""
