"""Canonical job states and the one table of legal transitions.

Pure: no I/O, no clock. Every rule about which state may follow which lives here, as data, so the
runner, the service and the docs all read the same table (h11's ``_state.py`` is the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"


class Action(StrEnum):
    """User actions that open an exit which upstream observation alone may not take."""

    CONTINUE = "continue"


# ``queued``/``running`` -> ``expired``: the provider can finish a job and purge its output while
# jobgate is not looking (pulse reads ``expired`` once its retention window has passed; an outage
# that spans the completion hides ``completed``). ``expired`` is the honest outcome, by the result
# vault's rule (issue 10): a job is expired when no copy of its result can be served any more, and
# here neither the provider (it purged it) nor jobgate (it never saw it) holds one. ``failed``
# would say the work did not succeed, which the provider never said, and refusing the move kept
# the job polled until its deadline after the provider had said it was over.
TRANSITIONS: Final[dict[JobState, frozenset[JobState]]] = {
    JobState.QUEUED: frozenset(
        {
            JobState.RUNNING,
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELED,
            JobState.EXPIRED,
        }
    ),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED, JobState.EXPIRED}
    ),
    JobState.SUCCEEDED: frozenset({JobState.EXPIRED, JobState.RUNNING}),
    JobState.FAILED: frozenset(),
    JobState.CANCELED: frozenset(),
    JobState.EXPIRED: frozenset(),
}

# Exits that are legal only while the named action is in effect: a finished CatchAll job goes back
# to processing after ``continue``, but a succeeded job that reports "running" on its own is an
# upstream anomaly, not a restart.
ACTION_ONLY: Final[dict[tuple[JobState, JobState], Action]] = {
    (JobState.SUCCEEDED, JobState.RUNNING): Action.CONTINUE,
}

TERMINAL: Final[frozenset[JobState]] = frozenset(
    {JobState.FAILED, JobState.CANCELED, JobState.EXPIRED}
)
"""States nothing leaves. ``succeeded`` is done for waiters but not absorbing (expiry, continue)."""

FINISHED: Final[frozenset[JobState]] = TERMINAL | {JobState.SUCCEEDED}
"""States in which polling stops and waiters are released."""

# The order used to recognise a backwards move (running -> queued) as opposed to an illegal one.
_RANK: Final[dict[JobState, int]] = {
    JobState.QUEUED: 0,
    JobState.RUNNING: 1,
    JobState.SUCCEEDED: 2,
    JobState.FAILED: 2,
    JobState.CANCELED: 2,
    JobState.EXPIRED: 3,
}


class Anomaly(StrEnum):
    """Why an observation was not applied. Each is logged and counted, never raised to the loop."""

    BACKWARDS = "backwards"
    UNKNOWN_STATUS = "unknown_status"
    ILLEGAL = "illegal"


@dataclass(frozen=True, slots=True)
class Refused:
    """An observation that leaves the canonical state as it was."""

    anomaly: Anomaly
    current: JobState
    observed: JobState | None
    native_status: str

    def describe(self) -> str:
        seen = self.observed.value if self.observed else "?"
        return (
            f"{self.anomaly.value}: {self.current.value} -> {seen} "
            f"(native status {self.native_status!r})"
        )


class IllegalTransition(Exception):
    """Raised by :func:`require` when a caller forces a transition the table forbids."""

    def __init__(self, current: JobState, target: JobState) -> None:
        super().__init__(f"illegal transition {current.value} -> {target.value}")
        self.current = current
        self.target = target


def is_allowed(current: JobState, target: JobState, action: Action | None = None) -> bool:
    """Whether ``current -> target`` is in the table (staying put is always allowed)."""
    if current == target:
        return True
    if target not in TRANSITIONS[current]:
        return False
    needed = ACTION_ONLY.get((current, target))
    return needed is None or needed == action


def require(current: JobState, target: JobState, action: Action | None = None) -> JobState:
    """Return ``target`` if legal; raise :class:`IllegalTransition` and change nothing otherwise."""
    if not is_allowed(current, target, action):
        raise IllegalTransition(current, target)
    return target


def observe(
    current: JobState,
    observed: JobState | None,
    native_status: str,
    action: Action | None = None,
) -> JobState | Refused:
    """Decide what an upstream observation does to a job in ``current``.

    ``observed`` is ``None`` when the adapter did not recognise the native status. The result is the
    state to store, or the reason the observation was refused; a refusal keeps ``current``.
    """
    if observed is None:
        return Refused(Anomaly.UNKNOWN_STATUS, current, None, native_status)
    if is_allowed(current, observed, action):
        return observed
    kind = Anomaly.BACKWARDS if _RANK[observed] < _RANK[current] else Anomaly.ILLEGAL
    return Refused(kind, current, observed, native_status)


def mermaid() -> str:
    """The transition diagram for the docs, drawn from the table so the two cannot drift."""
    order = list(JobState).index  # the lifecycle's order reads better than the alphabet's
    lines = ["stateDiagram-v2", "    [*] --> queued"]
    for src, targets in TRANSITIONS.items():
        for dst in sorted(targets, key=order):
            note = ACTION_ONLY.get((src, dst))
            label = f" : {note.value}" if note else ""
            lines.append(f"    {src.value} --> {dst.value}{label}")
    for state in sorted(TERMINAL, key=order):
        lines.append(f"    {state.value} --> [*]")
    return "\n".join(lines)
