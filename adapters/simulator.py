"""What the four provider sandboxes share: scaled time, scenarios, auth, and seeded fault injection.

Each sandbox (``adapters/<name>/sandbox.py``) renders these in its own provider's paths and bodies.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from aiohttp import web

MonoClock = Callable[[], float]


class Scenario(StrEnum):
    SUCCEED = "succeed"
    FAIL = "fail"
    SLOW = "slow"
    LARGE = "large"
    EXPIRE = "expire"
    FLAKY = "flaky"


class Fault(StrEnum):
    SERVER_ERROR = "server_error"
    RATE_LIMITED = "rate_limited"
    MALFORMED = "malformed"
    UNKNOWN_STATUS = "unknown_status"


SCENARIO_HEADER = "X-Sandbox-Scenario"
_TOKEN = re.compile(r"sandbox=([a-z_]+)")
FLAKY_RATE = 0.35
"""How often a ``flaky`` job's status call misbehaves."""
SLOW_FACTOR = 4.0
"""How much longer a ``slow`` job's stages last."""
UNKNOWN_STATUS_VALUE = "reticulating_splines"
"""The native status a sandbox answers for an ``UNKNOWN_STATUS`` fault: in no status table."""


@dataclass
class SandboxSettings:
    """Shared by every sandbox in one process.

    ``speed`` divides every duration (a 12-minute CatchAll job takes 30 s at speed 24).
    ``faults`` is a sandbox-wide probability that a status call misbehaves, drawn from a generator
    seeded with ``seed`` so that a failing run can be replayed. ``api_keys``, when set, is the only
    set of keys accepted; otherwise any non-empty key is.
    """

    speed: float = 1.0
    faults: float = 0.0
    seed: int | None = None
    api_keys: frozenset[str] | None = None
    clock: MonoClock = time.monotonic
    pulse_webhooks: list[tuple[str, str]] = field(default_factory=list)
    """``(url, whsec_ secret)`` endpoints the Pulse sandbox signs and POSTs its job events to: the
    stand-in for the Svix portal. Mutable, read on every delivery round, so endpoints added while
    the sandbox runs (its ``POST /webhook/endpoints`` appends here) get the events from then on."""
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError("speed must be positive")
        if not 0.0 <= self.faults <= 1.0:
            raise ValueError("faults must be a rate between 0 and 1")
        self.rng = random.Random(self.seed)

    def scaled(self, seconds: float) -> float:
        return seconds / self.speed

    def key_ok(self, key: str | None) -> bool:
        if not key:
            return False
        return self.api_keys is None or key in self.api_keys

    def draw_fault(self, scenario: Scenario) -> Fault | None:
        """A fault for this status call, or ``None``; flaky jobs misbehave above the global rate."""
        rate = self.faults
        if scenario is Scenario.FLAKY:
            rate = max(rate, FLAKY_RATE)
        if rate <= 0.0 or self.rng.random() >= rate:
            return None
        return self.rng.choice(list(Fault))


SETTINGS_KEY = web.AppKey("sandbox_settings", SandboxSettings)
PREFIX_KEY = web.AppKey("sandbox_prefix", str)
"""The path prefix a sandbox is mounted under ('' when it runs alone); used to build self-links."""


def pick_scenario(header: str | None, *texts: object) -> Scenario:
    """The scenario from the request header, else from a ``sandbox=<name>`` token in the input."""
    candidates: list[str] = []
    if header:
        candidates.append(header.strip().lower())
    for text in texts:
        if isinstance(text, str):
            candidates.extend(m.group(1) for m in _TOKEN.finditer(text.lower()))
    for name in candidates:
        try:
            return Scenario(name)
        except ValueError:
            continue
    return Scenario.SUCCEED


def self_url(request: web.Request, path: str) -> str:
    """An absolute URL to ``path`` on this sandbox, honouring the prefix it is mounted under."""
    prefix = request.app.get(PREFIX_KEY, "")
    return f"{request.url.origin()}{prefix}/{path.lstrip('/')}"


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    seconds: float


@dataclass
class Timeline:
    """A job's walk through its provider's stages, in scaled time from ``started``."""

    stages: Sequence[Stage]
    started: float
    scale: float = 1.0

    def total(self) -> float:
        return sum(s.seconds for s in self.stages) * self.scale

    def position(self, now: float) -> tuple[int, float]:
        """The index of the current stage and the fraction of the whole walk done (0..1).

        Past the end the index is ``len(stages)``: the job has finished.
        """
        elapsed = max(0.0, now - self.started)
        total = self.total()
        done = min(1.0, elapsed / total) if total > 0 else 1.0
        for index, stage in enumerate(self.stages):
            length = stage.seconds * self.scale
            if elapsed < length:
                return index, done
            elapsed -= length
        return len(self.stages), 1.0

    def finished_at(self) -> float:
        return self.started + self.total()


def stage_durations(
    settings: SandboxSettings, scenario: Scenario, stages: Sequence[Stage]
) -> Timeline:
    scale = 1.0 / settings.speed
    if scenario is Scenario.SLOW:
        scale *= SLOW_FACTOR
    return Timeline(stages=stages, started=settings.clock(), scale=scale)


def malformed_response() -> web.Response:
    """A body that claims to be JSON and is not: a truncated object."""
    return web.Response(
        status=200, body=b'{"status": "processing", "progress": ', content_type="application/json"
    )
