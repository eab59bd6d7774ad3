"""Offer delivery: validated offers to Ably and Redis, retried, exactly once per offer."""
