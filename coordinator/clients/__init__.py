"""Enrolled clients: tokens (hashed), profiles, leases."""
