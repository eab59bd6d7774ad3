"""Offer delivery to Redis and Ably: placeholder, being written."""
