"""Agents: decode, look up state, call the rules in core/, write tables and send."""
