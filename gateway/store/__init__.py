"""Persistence: the :class:`JobStore` protocol and its implementations."""

from gateway.store.base import (
    ClaimedIdempotency,
    Event,
    IdempotencyConflict,
    IdempotencyInFlight,
    IdempotencyPhase,
    IdempotencyRecord,
    JobFilter,
    JobStore,
    NewEvent,
    Page,
    StaleWrite,
)

__all__ = [
    "ClaimedIdempotency",
    "Event",
    "IdempotencyConflict",
    "IdempotencyInFlight",
    "IdempotencyPhase",
    "IdempotencyRecord",
    "JobFilter",
    "JobStore",
    "NewEvent",
    "Page",
    "StaleWrite",
]
