"""The pure A/B slot state machine: every illegal transition refused, invariants in every reachable state."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from tinymlops.edge.agent.slots import MAX_REFUSED, BundleInfo, Phase, SlotEntry, SlotState
from tinymlops.errors import AgentStateError, SlotTransitionError


def info(n: int) -> BundleInfo:
    return BundleInfo(
        bundle_id=hashlib.md5(str(n).encode()).hexdigest(),
        sha256=hashlib.sha256(str(n).encode()).hexdigest(),
        size=1000 + n,
        ref=f"tiny:{n}",
        created_at=f"2024-01-01T00:00:{n % 60:02d}+00:00",
    )


def installed(*ns: int) -> SlotState:
    s = SlotState.initial()
    for n in ns:
        b = info(n)
        s = s.stage(b).mark_verified(b.bundle_id).mark_smoke_tested(b.bundle_id).commit(b.bundle_id)
    return s


# --- the happy path and each refusal -------------------------------------------------------------
def test_install_switch_and_rollback() -> None:
    s = installed(1)
    assert (s.active, s.pending, s.active_bundle) == ("a", None, info(1))
    assert s.fallback is None
    s = installed(1, 2)
    assert s.active == "b" and s.fallback == "a"
    back = s.rollback()
    assert back.active == "a" and back.active_bundle == info(1)
    assert back.is_refused(info(2).sha256) and back.fallback is None  # never back to the refused one
    assert back.generation == s.generation + 1
    server = s.rollback(refuse=False)
    assert server.active == "a" and not server.is_refused(info(2).sha256) and server.fallback == "b"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: installed(1).commit(info(2).bundle_id), "no install is pending"),
        (lambda: installed(1).stage(info(2)).commit(info(2).bundle_id), "it is staged; only a verified, smoke-tested"),
        (lambda: installed(1).stage(info(2)).mark_smoke_tested(info(2).bundle_id), "not verified"),
        (
            lambda: installed(1).stage(info(2)).mark_verified(info(2).bundle_id).mark_verified(info(2).bundle_id),
            "it is verified, not staged",
        ),
        (lambda: installed(1).stage(info(2)).stage(info(3)), "still pending"),
        (lambda: installed(1).stage(info(1)), "already the active bundle"),
        (lambda: installed(1).stage(info(2)).mark_verified(info(3).bundle_id), "pending install in slot b is bundle"),
        (lambda: installed(1).rollback(), "slot b holds no verified, smoke-tested bundle"),
        (lambda: SlotState.initial().rollback(), "no bundle is active"),
        (lambda: installed(1, 2).stage(info(3)).rollback(), "pending"),
        (lambda: SlotState.initial().abort(), "no install is pending"),
        (lambda: installed(1).invalidate("b"), "it is empty"),
        (lambda: installed(1).stage(info(2)).invalidate("b"), "an install into it is pending"),
        (lambda: installed(1).invalidate("c"), "no slot named 'c'"),
        (lambda: installed(1, 2).rollback().stage(info(2)), "refused before"),
        (lambda: SlotState.initial().stage("not info"), "needs a BundleInfo"),  # type: ignore[arg-type]
    ],
)
def test_illegal_transitions_are_refused_by_name(make: Any, match: str) -> None:
    with pytest.raises(SlotTransitionError, match=match):
        make()


def test_failed_and_aborted_installs_leave_the_active_slot() -> None:
    s = installed(1, 2)
    staged = s.stage(info(3)).mark_verified(info(3).bundle_id)
    failed = staged.fail(info(3).bundle_id)
    assert failed.active == "b" and failed.slots["a"] is None and failed.is_refused(info(3).sha256)
    aborted = s.stage(info(3)).abort()
    assert aborted.active == "b" and aborted.slots["a"] is None and not aborted.is_refused(info(3).sha256)


def test_invalidate_active_falls_back_or_to_none() -> None:
    s = installed(1, 2)
    assert s.invalidate("b").active == "a"
    assert s.invalidate("a").active == "b"
    assert s.invalidate("b").invalidate("a").active is None


def test_refused_list_is_bounded_oldest_first() -> None:
    s = installed(0)
    for n in range(1, MAX_REFUSED + 10):
        s = s.stage(info(n)).fail(info(n).bundle_id)
    assert len(s.refused) == MAX_REFUSED
    assert s.refused[-1] == info(MAX_REFUSED + 9).sha256 and not s.is_refused(info(1).sha256)


# --- serialisation ---------------------------------------------------------------------------------
def test_round_trip_and_strict_parse() -> None:
    s = installed(1, 2).stage(info(3)).mark_verified(info(3).bundle_id)
    doc = json.loads(json.dumps(s.to_dict()))
    assert SlotState.from_dict(doc) == s
    for key in doc:
        broken = {k: v for k, v in doc.items() if k != key}
        with pytest.raises(AgentStateError, match=f"missing {key}"):
            SlotState.from_dict(broken)
    with pytest.raises(AgentStateError, match="unknown extra"):
        SlotState.from_dict({**doc, "extra": 1})
    with pytest.raises(AgentStateError, match="unsupported spec_version"):
        SlotState.from_dict({**doc, "spec_version": "2.0"})
    # inconsistent documents: each names the broken invariant
    with pytest.raises(AgentStateError, match="active slot a must hold a verified, smoke-tested bundle"):
        SlotState.from_dict({**doc, "active": "a"})  # slot a is pending (verified, not ready)
    with pytest.raises(AgentStateError, match="is verified but no install into it is pending"):
        SlotState.from_dict({**doc, "pending": None})
    with pytest.raises(AgentStateError, match="'phase' must be one of"):
        SlotState.from_dict({**doc, "slots": {**doc["slots"], "a": {**doc["slots"]["a"], "phase": "done"}}})
    with pytest.raises(AgentStateError, match="both slots hold the same bundle"):
        SlotState.from_dict({**doc, "pending": None, "slots": {"a": doc["slots"]["b"], "b": doc["slots"]["b"]}})


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=6) | st.sampled_from(["a", "b", "ready"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_from_dict_never_raises_anything_but_agent_state_error(data: st.DataObject) -> None:
    doc = installed(1, 2).stage(info(3)).to_dict()
    # replace one field (or one field of one slot) with arbitrary JSON
    if data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(doc)))
        doc[key] = data.draw(_json)
    else:
        slot = data.draw(st.sampled_from(["a", "b"]))
        key = data.draw(st.sampled_from(["bundle_id", "sha256", "size", "ref", "created_at", "phase"]))
        doc["slots"][slot][key] = data.draw(_json)
    try:
        state = SlotState.from_dict(doc)
    except AgentStateError as exc:
        assert exc.message.startswith(("agent state", "bundle info", "slot state"))
        return
    state.check()
    assert SlotState.from_dict(state.to_dict()) == state


# --- the state machine, explored ------------------------------------------------------------------
_ids = st.none() | st.none() | st.integers(0, 5)
#: successful transitions by name, over every run of the machine (see the last test)
SEEN: dict[str, int] = {}


class SlotMachine(RuleBasedStateMachine):
    """Tries every transition in every reachable state. A legal one must keep the invariants and do
    what it says; an illegal one must raise SlotTransitionError (and, states being immutable, change
    nothing)."""

    @initialize()
    def start(self) -> None:
        self.state = SlotState.initial()
        self.committed: set[str] = set()  # sha256 of every bundle ever committed
        self.tested: set[str] = set()  # sha256 of every bundle ever smoke-tested

    def target(self, n: int | None) -> BundleInfo:
        """``None``: the bundle being installed (so installs get all the way through); else bundle n."""
        if n is None:
            return self.state.pending_bundle or info(0)
        return info(n)

    def attempt(self, fn: Any, *args: Any, **kw: Any) -> SlotState | None:
        before = self.state
        try:
            new = fn(*args, **kw)
        except SlotTransitionError:
            assert self.state is before
            return None
        assert new.generation == before.generation + 1
        SEEN[fn.__name__] = SEEN.get(fn.__name__, 0) + 1
        return new

    @rule(n=st.integers(0, 5))
    def stage(self, n: int) -> None:
        before = self.state
        new = self.attempt(before.stage, info(n))
        if new is not None:
            assert new.active == before.active and new.pending == before.inactive
            assert new.slots[new.pending] == SlotEntry(info(n), Phase.STAGED)
            self.state = new

    @rule(n=_ids)
    def mark_verified(self, n: int | None) -> None:
        b = self.target(n)
        new = self.attempt(self.state.mark_verified, b.bundle_id)
        if new is not None:
            assert new.active == self.state.active
            self.state = new

    @rule(n=_ids)
    def mark_smoke_tested(self, n: int | None) -> None:
        b = self.target(n)
        new = self.attempt(self.state.mark_smoke_tested, b.bundle_id)
        if new is not None:
            self.tested.add(b.sha256)
            self.state = new

    @rule(n=_ids)
    def commit(self, n: int | None) -> None:
        b = self.target(n)
        before = self.state
        new = self.attempt(before.commit, b.bundle_id)
        if new is not None:
            assert b.sha256 in self.tested
            assert new.active == before.pending and new.active_bundle == b
            if before.active is not None and before.active_bundle is not None:
                old = new.slots[before.active]
                assert old is not None and old.bundle == before.active_bundle  # the fallback is kept
            self.committed.add(b.sha256)
            self.state = new

    @rule(n=_ids)
    def fail(self, n: int | None) -> None:
        b = self.target(n)
        before = self.state
        new = self.attempt(before.fail, b.bundle_id)
        if new is not None:
            assert new.active == before.active and new.active_bundle == before.active_bundle
            assert new.pending is None and new.slots[before.pending] is None and new.is_refused(b.sha256)
            self.state = new

    @rule(n=st.integers(0, 5))
    def advance(self, n: int) -> None:
        """The next legal step of an install (stage bundle n when none is pending), so the
        exploration gets past commits often; the rules above also try every step out of turn."""
        pending = self.state.pending
        if pending is None:
            self.stage(n)
            return
        entry = self.state.slots[pending]
        assert entry is not None
        step = {Phase.STAGED: self.mark_verified, Phase.VERIFIED: self.mark_smoke_tested, Phase.READY: self.commit}
        step[entry.phase](None)

    @rule(n=st.integers(0, 5))
    def install(self, n: int) -> None:
        """A whole install in one step (when nothing is pending), to reach rollbacks often."""
        if self.state.pending is None:
            for _ in range(4):
                self.advance(n)

    @rule()
    def abort(self) -> None:
        before = self.state
        new = self.attempt(before.abort)
        if new is not None:
            assert new.active == before.active and new.active_bundle == before.active_bundle
            assert new.pending is None and new.refused == before.refused
            self.state = new

    @rule(refuse=st.booleans())
    def rollback(self, refuse: bool) -> None:
        before = self.state
        new = self.attempt(before.rollback, refuse=refuse)
        if new is not None:
            assert before.fallback is not None and new.active == before.fallback
            assert before.active_bundle is not None
            assert new.is_refused(before.active_bundle.sha256) == refuse
            self.state = new

    @rule(slot=st.sampled_from(["a", "b"]))
    def invalidate(self, slot: str) -> None:
        before = self.state
        new = self.attempt(before.invalidate, slot)
        if new is not None:
            assert new.slots[slot] is None
            if before.active == slot:
                assert new.active == before.fallback
            else:
                assert new.active == before.active
            self.state = new

    @invariant()
    def invariants_hold(self) -> None:
        s = self.state
        s.check()
        if s.active is not None:
            entry = s.slots[s.active]
            assert entry is not None and entry.phase is Phase.READY
            assert entry.bundle.sha256 in self.committed  # only ever reached through a commit
            assert entry.bundle.sha256 in self.tested
            assert s.pending != s.active
            assert not s.is_refused(entry.bundle.sha256)
        for name, entry in s.slots.items():
            if entry is not None and name != s.pending:
                assert entry.phase is Phase.READY
        if s.fallback is not None:
            fb = s.slots[s.fallback]
            assert fb is not None and fb.phase is Phase.READY and not s.is_refused(fb.bundle.sha256)

    @invariant()
    def survives_serialisation(self) -> None:
        assert SlotState.from_dict(json.loads(json.dumps(self.state.to_dict()))) == self.state


SlotMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestSlotMachine = SlotMachine.TestCase


def test_the_exploration_reaches_every_transition() -> None:
    """Guards the machine test against exploring only the trivial states."""
    SEEN.clear()
    explore = settings(max_examples=150, stateful_step_count=40, deadline=None, derandomize=True, database=None)
    run_state_machine_as_test(SlotMachine, settings=explore)
    names = {"stage", "mark_verified", "mark_smoke_tested", "commit", "fail", "abort", "rollback", "invalidate"}
    assert names <= set(SEEN), f"never reached: {sorted(names - set(SEEN))}"
    assert SEEN["commit"] >= 20 and SEEN["rollback"] >= 3 and SEEN["invalidate"] >= 3
