"""Pulse (runpulse.com) document extraction: the poll-API adapter and its sandbox."""
