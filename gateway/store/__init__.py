"""Persistence: the :class:`JobStore` protocol and its implementations."""

from gateway.store.base import (
    AbandonedKey,
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
    "AbandonedKey",
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
