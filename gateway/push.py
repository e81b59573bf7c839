"""Whether a provider's callbacks are arriving: the runner's judge of when polling may slow down.

Pure bookkeeping, no I/O. While a provider's callbacks arrive, a job that expects one is polled
only as a safety net, at the slow end of its cadence. A job the runner finds ended without a
callback before it (its poll was the safety net's, not a callback's) is a *miss*: the provider
finished a job and did not say so. After ``MISSES_TO_DISTRUST`` misses in a row the provider's
jobs go back to their normal cadence, until a callback ends a job again.

The judgement is per process and starts trusting: a replica that has seen nothing yet takes the
configuration's word that the provider pushes. A poll that meets a job's end only moments
before its callback would have arrived also counts as a miss; one such race does not distrust a
provider, a run of them does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

MISSES_TO_DISTRUST: Final = 2


@dataclass
class PushWatch:
    on_miss: Callable[[str], None] | None = None
    """Told each miss, with the provider's name (the metric)."""
    misses: dict[str, int] = field(default_factory=dict)

    def trusted(self, provider: str) -> bool:
        return self.misses.get(provider, 0) < MISSES_TO_DISTRUST

    def ended(self, provider: str, *, by_callback: bool) -> None:
        """A job that expected a push was seen ending, by a poll a callback asked for or not."""
        if by_callback:
            self.misses[provider] = 0
            return
        self.misses[provider] = self.misses.get(provider, 0) + 1
        if self.on_miss is not None:
            self.on_miss(provider)
