"""The learned durations a process schedules polls by: read from the store, grown locally, merged
back.

One keeper per process. The runner asks it for a provider's fitted distribution (by cadence key)
and tells it each job's duration when the job ends. Observations collect in a local delta; every
``flush_every`` seconds (and at stop) the deltas are merged into the store in one transaction and
every sketch is read back, so each replica schedules by what all of them learned, at most one
flush behind. A crash loses the unflushed delta: a few durations, never a job.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Final

import structlog

from adapters.base import JSON
from adapters.cadence_keys import KeyOf
from gateway.durations import HALF_LIFE, Distribution, DurationDelta, DurationSketch
from gateway.policy import PollPolicy, poll_density
from gateway.store.base import LearnedDurations

log = structlog.get_logger("jobgate.cadence")


FLUSH_EVERY: Final = 5.0


def sketch_name(provider: str, key: str) -> str:
    return f"{provider}/{key}"


class DurationBook:
    def __init__(
        self,
        store: LearnedDurations,
        policies: Mapping[str, PollPolicy],
        keys: Mapping[str, KeyOf] | None = None,
        *,
        flush_every: float = FLUSH_EVERY,
    ) -> None:
        self.store = store
        self.policies = policies
        self.keys = dict(keys or {})
        self.flush_every = flush_every
        self._known: dict[str, DurationSketch] = {}
        self._pending: dict[str, DurationSketch] = {}
        self._fitted: dict[str, tuple[Distribution, tuple[float, ...]] | None] = {}

    def key(self, provider: str, request: JSON, job_type: str | None) -> str:
        key_of = self.keys.get(provider)
        return key_of(request, job_type) if key_of is not None else ""

    def schedule(self, provider: str, key: str) -> tuple[Distribution, tuple[float, ...]] | None:
        """The fitted distribution and poll density for ``provider``'s ``key``, once enough jobs
        have finished (``min_jobs``); None before, or where the policy does not learn."""
        policy = self.policies.get(provider)
        if policy is None or not policy.learn:
            return None
        name = sketch_name(provider, key)
        if name not in self._fitted:
            sketch = self.sketch(name)
            dist = Distribution.fit(sketch) if sketch.observed >= policy.min_jobs else None
            self._fitted[name] = (
                None if dist is None else (dist, poll_density(dist, policy.lag_goal))
            )
        return self._fitted[name]

    def sketch(self, name: str) -> DurationSketch:
        """What this process knows of ``name``: the store's sketch as last read, with this
        process's unmerged observations folded in."""
        known = self._known.get(name, DurationSketch())
        pending = self._pending.get(name)
        half_life = self._half_life(name)
        return known if pending is None else known.absorb(pending, half_life=half_life)

    def observe(self, provider: str, key: str, seconds: float) -> None:
        if provider not in self.policies or not seconds >= 0:
            return
        name = sketch_name(provider, key)
        pending = self._pending.get(name, DurationSketch())
        self._pending[name] = pending.observe(seconds, half_life=self._half_life(name))
        self._fitted.pop(name, None)

    async def load(self) -> None:
        self._known = await self.store.durations()
        self._fitted.clear()

    async def flush(self) -> None:
        """Merge this process's observations into the store and read everyone's back."""
        pending, self._pending = self._pending, {}
        deltas = [
            DurationDelta(name, sketch, self._half_life(name)) for name, sketch in pending.items()
        ]
        try:
            await self.store.merge_durations(deltas)
        except Exception:
            # Kept for the next flush: a store that is down costs the cadence freshness only.
            for name, sketch in pending.items():
                later = self._pending.get(name)
                half_life = self._half_life(name)
                self._pending[name] = (
                    sketch if later is None else sketch.absorb(later, half_life=half_life)
                )
            raise
        await self.load()

    async def run(self) -> None:
        """Flush every ``flush_every`` seconds until cancelled; then one last time."""
        try:
            while True:
                await asyncio.sleep(self.flush_every)
                try:
                    await self.flush()
                except Exception:
                    log.warning("cadence.flush_failed", exc_info=True)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())

    def _half_life(self, name: str) -> float:
        policy = self.policies.get(name.split("/", 1)[0])
        return policy.half_life_jobs if policy is not None else HALF_LIFE
