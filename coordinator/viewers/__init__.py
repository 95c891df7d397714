"""Read-only viewer tokens: minted and revoked by the operator, for sharing a dashboard without the admin token."""
