"""How long a provider's jobs take: a decayed, mergeable histogram of completion times.

Pure: no I/O and no clock. The runner observes each finished job's duration into a small local
sketch; the cadence keeper (``gateway.cadence``) merges those deltas into the store, where every
replica reads the same sketch back. The poll schedule (``gateway.policy``) reads a
:class:`Distribution` fitted from it.

The sketch is a histogram over log-spaced buckets (four to a doubling, so a bucket is 19 % wide:
about the precision a schedule can use), from 10 ms to about a month. It keeps weights, not
durations: its size is bounded by the bucket count whatever the number of jobs.

It forgets by count, not by time: each observation first multiplies every weight by
``decay = 0.5 ** (1 / half_life)``, so the job ``half_life`` finishes ago weighs half as much as
the newest one. A count-based decay is what makes deltas mergeable in any order and on any
replica: folding a delta of ``n`` observations into a sketch is ``sketch * decay**n + delta``,
exactly what observing them one by one would have given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

PER_DOUBLING: Final = 4
MIN_SECONDS: Final = 0.01
BUCKETS: Final = 120
"""0.01 s .. 0.01 * 2**30 s (about 124 days): everything a job may take."""
HALF_LIFE: Final = 200.0
"""Finished jobs after which an observation weighs half: recent enough to follow a drift within a
few hundred jobs, long enough that one odd job barely moves the schedule."""
LEAD_TRIM: Final = 0.005
"""The share of the weight, earliest first, that a fitted distribution leaves out: one job in 200
ending that early is seen at the first poll, rather than every job paying polls for it."""
_DROP_BELOW: Final = 1e-6
"""Weights this small are dropped: a bucket unseen for ~4,000 jobs stops taking room."""


def bucket_of(seconds: float) -> int:
    if not seconds > MIN_SECONDS:  # also NaN
        return 0
    index = int(math.log2(seconds / MIN_SECONDS) * PER_DOUBLING)
    return min(BUCKETS - 1, index)


def bucket_low(index: int) -> float:
    return float(MIN_SECONDS * 2.0 ** (index / PER_DOUBLING))


def decay_factor(half_life: float) -> float:
    return float(0.5 ** (1.0 / half_life))


@dataclass(frozen=True, slots=True)
class DurationSketch:
    """Decayed weights per bucket, and how many jobs were ever observed (undecayed)."""

    weights: Mapping[int, float] = field(default_factory=dict)
    observed: int = 0

    @property
    def empty(self) -> bool:
        return self.observed == 0

    def observe(self, seconds: float, *, half_life: float = HALF_LIFE) -> DurationSketch:
        one = DurationSketch({bucket_of(seconds): 1.0}, 1)
        return self.absorb(one, half_life=half_life)

    def absorb(self, delta: DurationSketch, *, half_life: float = HALF_LIFE) -> DurationSketch:
        """This sketch with ``delta``'s observations folded in, as if they came after its own."""
        if delta.empty:
            return self
        scale = decay_factor(half_life) ** delta.observed
        merged = {index: weight * scale for index, weight in self.weights.items()}
        for index, weight in delta.weights.items():
            merged[index] = merged.get(index, 0.0) + weight
        kept = {index: weight for index, weight in merged.items() if weight >= _DROP_BELOW}
        return DurationSketch(kept, self.observed + delta.observed)

    def to_record(self) -> dict[str, object]:
        return {
            "observed": self.observed,
            "weights": {str(index): round(weight, 9) for index, weight in self.weights.items()},
        }

    @classmethod
    def from_record(cls, data: Mapping[str, object]) -> DurationSketch:
        """The sketch a record holds; a malformed record reads as an empty sketch (it only ever
        costs the schedule its learning, never a job)."""
        weights = data.get("weights")
        observed = data.get("observed")
        if not isinstance(weights, Mapping) or not isinstance(observed, int) or observed < 0:
            return cls()
        kept: dict[int, float] = {}
        for key, value in weights.items():
            try:
                index = int(key)
            except (TypeError, ValueError):
                continue
            if 0 <= index < BUCKETS and isinstance(value, int | float) and value > 0:
                kept[index] = float(value)
        return cls(kept, observed)

    def quantile(self, q: float) -> float | None:
        """The duration below which a share ``q`` of the (decayed) weight lies; None when empty."""
        total = sum(self.weights.values())
        if total <= 0:
            return None
        seen = 0.0
        for index in sorted(self.weights):
            weight = self.weights[index]
            if seen + weight >= q * total:
                share = (q * total - seen) / weight
                low, high = bucket_low(index), bucket_low(index + 1)
                return low + share * (high - low)
            seen += weight
        return bucket_low(max(self.weights) + 1)


@dataclass(frozen=True, slots=True)
class DurationDelta:
    """Observations made in one process since its last merge, for the sketch named ``name``
    (``provider/key``), to fold into the stored one with ``half_life``."""

    name: str
    sketch: DurationSketch
    half_life: float = HALF_LIFE


# --------------------------------------------------------------------------------------------------
# The fitted distribution a schedule reads


@dataclass(frozen=True, slots=True)
class Distribution:
    """A completion-time distribution as piecewise-constant hazard over contiguous segments.

    ``edges[i]..edges[i+1]`` has probability ``mass[i]``; ``hazard[i]`` is the mean hazard there
    (the chance per second of finishing, given not finished by then). Built smoothed: a histogram
    of 20 jobs has holes a schedule must not take for "never finishes here".
    """

    edges: tuple[float, ...]
    mass: tuple[float, ...]
    hazard: tuple[float, ...]
    observed: int

    @property
    def end(self) -> float:
        return self.edges[-1]

    def segment(self, elapsed: float) -> int:
        """The segment holding ``elapsed``; -1 before the first, ``len(mass)`` past the last."""
        if elapsed < self.edges[0]:
            return -1
        low, high = 0, len(self.edges) - 1
        while low < high:
            middle = (low + high) // 2
            if self.edges[middle + 1] <= elapsed:
                low = middle + 1
            else:
                high = middle
        return low

    @classmethod
    def fit(cls, sketch: DurationSketch) -> Distribution | None:
        """The smoothed distribution of ``sketch``; None when it holds no weight."""
        if not sketch.weights:
            return None
        first, last = min(sketch.weights) - 1, max(sketch.weights) + 1
        first = max(0, first)
        last = min(BUCKETS - 1, last)
        raw = [sketch.weights.get(index, 0.0) for index in range(first, last + 1)]
        # A [1, 2, 1] kernel: each observation spreads over its neighbours, a bucket either side.
        smooth = [
            0.25 * (raw[i - 1] if i > 0 else 0.0)
            + 0.5 * raw[i]
            + 0.25 * (raw[i + 1] if i + 1 < len(raw) else 0.0)
            for i in range(len(raw))
        ]
        total = sum(smooth)
        # Where the decayed weight is negligible (what is left of durations from before a drift),
        # no poll should be spent: the distribution starts where LEAD_TRIM of it has ended.
        skip, seen = 0, 0.0
        while skip < len(smooth) - 1 and seen + smooth[skip] < LEAD_TRIM * total:
            seen += smooth[skip]
            skip += 1
        first += skip
        smooth = smooth[skip:]
        total = sum(smooth)
        mass = [weight / total for weight in smooth]
        edges = [bucket_low(index) for index in range(first, last + 2)]
        hazard: list[float] = []
        surviving = 1.0
        for index, share in enumerate(mass):
            width = edges[index + 1] - edges[index]
            # The mean hazard over the segment: its mass over the time spent surviving in it.
            exposure = width * max(surviving - share / 2.0, 1e-12)
            hazard.append(share / exposure)
            surviving = max(0.0, surviving - share)
        return cls(tuple(edges), tuple(mass), tuple(hazard), sketch.observed)
