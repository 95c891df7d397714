"""Rounds: sampling, the guarded state machine, the timer that closes and opens them."""
