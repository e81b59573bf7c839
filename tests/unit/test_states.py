from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.states import (
    ACTION_ONLY,
    FINISHED,
    TERMINAL,
    TRANSITIONS,
    Action,
    Anomaly,
    IllegalTransition,
    JobState,
    Refused,
    is_allowed,
    mermaid,
    observe,
    require,
)

Q, R, S, F, C, E = (
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELED,
    JobState.EXPIRED,
)

README = Path(__file__).resolve().parents[2] / "README.md"

# The table as the README documents it, written out independently of the module so a drift in
# either is caught. (DESIGN.md's sketch predates upstream expiry of an unfinished job.)
DOCUMENTED = {
    (Q, R),
    (Q, S),
    (Q, F),
    (Q, C),
    (Q, E),
    (R, S),
    (R, F),
    (R, C),
    (R, E),
    (S, E),
    (S, R),
}


def test_table_matches_design_doc() -> None:
    table = {(src, dst) for src, targets in TRANSITIONS.items() for dst in targets}
    assert table == DOCUMENTED
    assert set(TRANSITIONS) == set(JobState)


def test_terminal_states_have_no_exit() -> None:
    assert {F, C, E} == TERMINAL
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset()
    assert {S, F, C, E} == FINISHED


@pytest.mark.parametrize(("current", "observed"), sorted(DOCUMENTED - {(S, R)}))
def test_documented_moves_apply(current: JobState, observed: JobState) -> None:
    assert observe(current, observed, "native") == observed


@pytest.mark.parametrize("current", [Q, R])
def test_upstream_expiry_ends_a_job_that_never_finished_here(current: JobState) -> None:
    # A pulse job that completed and was purged while the gateway was down reads "expired" next:
    # nothing can serve its result any more, so it is over, not an anomaly to poll until the
    # deadline.
    assert observe(current, E, "expired") == E
    assert E in TERMINAL


def test_succeeded_to_running_needs_continue() -> None:
    refused = observe(S, R, "processing")
    assert isinstance(refused, Refused)
    assert refused.anomaly is Anomaly.BACKWARDS
    assert observe(S, R, "processing", Action.CONTINUE) == R
    assert ACTION_ONLY == {(S, R): Action.CONTINUE}


def test_backwards_move_is_refused_and_named() -> None:
    refused = observe(R, Q, "pending")
    assert refused == Refused(Anomaly.BACKWARDS, R, Q, "pending")
    assert isinstance(refused, Refused)
    assert "running -> queued" in refused.describe()
    assert "'pending'" in refused.describe()


def test_unknown_status_keeps_state() -> None:
    refused = observe(R, None, "reticulating")
    assert isinstance(refused, Refused)
    assert refused.anomaly is Anomaly.UNKNOWN_STATUS
    assert refused.current is R


def test_sideways_move_between_terminals_is_illegal() -> None:
    refused = observe(F, C, "cancelled")
    assert isinstance(refused, Refused)
    assert refused.anomaly is Anomaly.ILLEGAL


def test_staying_put_is_allowed_everywhere() -> None:
    for state in JobState:
        assert observe(state, state, "same") == state


def test_require_raises_and_names_the_move() -> None:
    with pytest.raises(IllegalTransition, match="failed -> running"):
        require(F, R)
    assert require(Q, R) == R


def test_mermaid_is_drawn_from_the_table() -> None:
    diagram = mermaid()
    for src, dst in DOCUMENTED:
        assert f"{src.value} --> {dst.value}" in diagram
    assert "succeeded --> running : continue" in diagram


def test_readme_diagram_is_the_table() -> None:
    [block] = re.findall(r"```mermaid\n(.*?)\n```", README.read_text(), flags=re.DOTALL)
    assert block == mermaid()


class JobMachine(RuleBasedStateMachine):
    """Feeds arbitrary observations and actions; the job must only ever move along the table."""

    def __init__(self) -> None:
        super().__init__()
        self.state = JobState.QUEUED
        self.history: list[JobState] = [self.state]

    @rule(observed=st.one_of(st.none(), st.sampled_from(JobState)), cont=st.booleans())
    def observe_report(self, observed: JobState | None, cont: bool) -> None:
        before = self.state
        outcome = observe(before, observed, "x", Action.CONTINUE if cont else None)
        if isinstance(outcome, Refused):
            assert outcome.current is before
            assert observed is None or not is_allowed(
                before, observed, Action.CONTINUE if cont else None
            )
            return
        if outcome != before:
            assert outcome in TRANSITIONS[before]
            if (before, outcome) in ACTION_ONLY:
                assert cont
        if before in TERMINAL:
            assert outcome == before
        self.state = outcome
        self.history.append(outcome)

    @invariant()
    def never_leaves_terminal(self) -> None:
        for index, state in enumerate(self.history):
            if state in TERMINAL:
                assert all(later == state for later in self.history[index:])


TestJobMachine = JobMachine.TestCase
