"""The rollout state machine: deterministic cohorts, health verdicts, legal transitions only.

Pure logic (no I/O), so everything is exercised directly: hypothesis properties for the cohort
hash and for arbitrary sequences of manual and automatic events, and explicit scenarios.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tinymlops.errors import RolloutTransitionError, SpecError, UsageError
from tinymlops.release.rollout import (
    AUTO,
    STATUSES,
    HealthSnapshot,
    RolloutState,
    Transition,
    cohort_position,
    evaluate,
    finish_rollback,
    first_stage,
    in_stage,
    judge,
    new_rollout,
    pause,
    promote,
    resume,
    rollback,
    start,
)
from tinymlops.spec.rollout import HealthCriteria, RolloutPlan, RolloutStage

ids = st.text(min_size=1, max_size=40)

CANARY = HealthCriteria(
    min_install_success_rate=0.9,
    max_smoke_failure_rate=0.0,
    max_error_rate=0.05,
    max_latency_ratio=1.5,
    min_reports=5,
    min_soak_s=600,
)


def plan(on_failure: str = "rollback") -> RolloutPlan:
    return RolloutPlan(
        stages=(
            RolloutStage("canary", 0.05, CANARY),
            RolloutStage("wide", 0.25, HealthCriteria(min_reports=20, min_soak_s=1800)),
            RolloutStage("all", 1.0, HealthCriteria(min_reports=50, min_soak_s=3600)),
        ),
        on_failure=on_failure,
    )


def healthy(stage: int, n: int = 10) -> HealthSnapshot:
    return HealthSnapshot(
        stage=stage,
        installs_ok=n,
        predictions=1000,
        prediction_errors=1,
        latency_p50_ms=10.0,
        baseline_p50_ms=9.0,
    )


def running(p: RolloutPlan | None = None, at: float = 1000.0) -> RolloutState:
    return start(new_rollout("rel-1", p or plan()), actor="alice", now=at).state


# --- cohorts -------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(ids, ids)
def test_position_is_deterministic_and_in_unit_interval(release_id: str, device_id: str) -> None:
    pos = cohort_position(release_id, device_id)
    assert 0.0 <= pos < 1.0
    assert cohort_position(release_id, device_id) == pos
    assert cohort_position(str(release_id), "".join(device_id)) == pos  # equal strings, new objects


@settings(max_examples=300, deadline=None)
@given(ids, ids, st.floats(0.0001, 1.0), st.floats(0.0001, 1.0))
def test_membership_is_monotone_in_the_fraction(release_id: str, device_id: str, a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    pos = cohort_position(release_id, device_id)
    assert (pos < lo) <= (pos < hi)  # in the smaller stage implies in the larger one


@settings(max_examples=200, deadline=None)
@given(ids, ids)
def test_stage_membership_grows_with_the_stage(release_id: str, device_id: str) -> None:
    p = plan()
    member = [in_stage(p, k, release_id, device_id) for k in range(len(p.stages))]
    assert member == sorted(member)  # False… then True…
    assert member[-1] is True  # the last stage is the whole fleet
    assert member.index(True) == first_stage(p, release_id, device_id)


def test_length_prefixing_separates_the_two_ids() -> None:
    assert cohort_position("ab", "c") != cohort_position("a", "bc")
    assert cohort_position("r", "d") != cohort_position("d", "r")


@settings(max_examples=12, deadline=None)
@given(ids, st.floats(0.01, 0.99))
def test_stage_sizes_track_the_fraction_within_binomial_tolerance(release_id: str, fraction: float) -> None:
    n = 4000
    inside = sum(cohort_position(release_id, f"device-{i}") < fraction for i in range(n))
    sigma = math.sqrt(n * fraction * (1 - fraction))
    assert abs(inside - n * fraction) <= 5 * sigma, (inside, n * fraction, sigma)


def test_positions_look_uniform_and_releases_reshuffle() -> None:
    n = 5000
    pos_a = [cohort_position("release-a", f"dev{i}") for i in range(n)]
    pos_b = [cohort_position("release-b", f"dev{i}") for i in range(n)]
    # ten equal bins: chi-square with 9 degrees of freedom, 0.1% critical value ~27.9
    counts = [0] * 10
    for p in pos_a:
        counts[int(p * 10)] += 1
    chi2 = sum((c - n / 10) ** 2 / (n / 10) for c in counts)
    assert chi2 < 27.9, counts
    # a new release draws a new canary: the two 5% cohorts barely overlap (~0.25% expected)
    canary_a = {i for i, p in enumerate(pos_a) if p < 0.05}
    canary_b = {i for i, p in enumerate(pos_b) if p < 0.05}
    assert len(canary_a & canary_b) < 0.3 * min(len(canary_a), len(canary_b))


def test_adding_devices_and_restarting_never_moves_existing_ones() -> None:
    p = plan()
    fleet = [f"dev-{i}" for i in range(500)]
    before = {d: first_stage(p, "rel-9", d) for d in fleet}
    grown = fleet + [f"new-{i}" for i in range(2000)]
    after = {d: first_stage(RolloutPlan.from_dict(p.to_dict()), "rel-9", d) for d in grown}  # "restart"
    assert all(after[d] == before[d] for d in fleet)


def test_bad_ids_and_stage_indexes_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="release_id must be a non-empty string"):
        cohort_position("", "d")
    with pytest.raises(UsageError, match="device_id must be a non-empty string"):
        cohort_position("r", None)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"stage must be an index in 0\.\.2, got 3"):
        in_stage(plan(), 3, "r", "d")


# --- health verdicts -----------------------------------------------------------------------
def test_verdict_waits_for_reports_and_soak_and_explains() -> None:
    v = judge(CANARY, healthy(0, n=3), 10_000)
    assert v.decision == "wait" and "install reports 3 < 5" in v.reason
    v = judge(CANARY, healthy(0), 599)
    assert v.decision == "wait" and "soak 599 s < 600 s" in v.reason
    v = judge(CANARY, healthy(0), 600)
    assert v.decision == "pass" and not v.failed
    assert {c.criterion for c in v.checks} >= {"min_install_success_rate", "max_latency_ratio", "min_soak_s"}


@pytest.mark.parametrize(
    ("snapshot", "criterion", "text"),
    [
        (
            HealthSnapshot(0, installs_ok=8, installs_failed=2),
            "min_install_success_rate",
            "install success rate 0.8 < 0.9",
        ),
        (
            HealthSnapshot(0, installs_ok=10, smoke_failures=1),
            "max_smoke_failure_rate",
            "smoke-test failure rate 0.1 > 0",
        ),
        (HealthSnapshot(0, installs_ok=10, predictions=100, prediction_errors=6), "max_error_rate", "0.06 > 0.05"),
        (HealthSnapshot(0, installs_ok=10, latency_p50_ms=20.0, baseline_p50_ms=10.0), "max_latency_ratio", "2 > 1.5"),
    ],
)
def test_each_criterion_fails_fast_with_measured_and_threshold(
    snapshot: HealthSnapshot, criterion: str, text: str
) -> None:
    v = judge(CANARY, snapshot, 0)  # no soak needed to fail
    assert v.decision == "fail"
    assert [c.criterion for c in v.failed] == [criterion]
    assert text in v.reason
    failed = v.failed[0]
    assert failed.measured is not None and failed.threshold in (0.9, 0.0, 0.05, 1.5)


def test_violation_without_enough_reports_waits_and_says_so() -> None:
    v = judge(CANARY, HealthSnapshot(0, installs_ok=1, smoke_failures=1), 10_000)
    assert v.decision == "wait"
    assert "too few reports" in v.reason and "smoke-test failure rate 1 > 0" in v.reason


def test_unmeasurable_criteria_do_not_block_and_are_named() -> None:
    v = judge(CANARY, HealthSnapshot(0, installs_ok=5), 600)
    assert v.decision == "pass"
    by_name = {c.criterion: c for c in v.checks}
    assert by_name["max_error_rate"].ok is None and "no data" in by_name["max_error_rate"].detail
    assert by_name["max_latency_ratio"].ok is None and "no baseline" in by_name["max_latency_ratio"].detail


def test_bad_snapshots_are_refused() -> None:
    with pytest.raises(UsageError, match=r"smoke_failures .3. exceeds the install reports .2."):
        HealthSnapshot(0, installs_ok=2, smoke_failures=3)
    with pytest.raises(UsageError, match="prediction_errors"):
        HealthSnapshot(0, predictions=1, prediction_errors=2)
    with pytest.raises(UsageError, match="'installs_ok' must be a non-negative integer"):
        HealthSnapshot(0, installs_ok=-1)
    with pytest.raises(UsageError, match="'latency_p50_ms' must be None or a finite number"):
        HealthSnapshot(0, latency_p50_ms=float("nan"))
    with pytest.raises(UsageError, match="elapsed_s must be a number"):
        judge(CANARY, healthy(0), float("nan"))


# --- scenarios -----------------------------------------------------------------------------
def test_canary_failing_smoke_tests_halts_then_rolls_back() -> None:
    state = running(at=1000.0)
    assert state.status == "running" and state.current_stage == "canary"
    broken = HealthSnapshot(0, installs_ok=6, smoke_failures=2)
    result = evaluate(state, broken, 1100.0)  # before the soak: failures do not wait
    assert result.verdict is not None and result.verdict.decision == "fail"
    assert [(t.from_status, t.to_status, t.actor) for t in result.transitions] == [
        ("running", "halted", AUTO),
        ("halted", "rolling_back", AUTO),
    ]
    assert result.transitions[0].reason == "stage 'canary' failed: smoke-test failure rate 0.3333 > 0"
    assert result.state.status == "rolling_back" and result.state.stage == 0
    assert not result.state.serves("any-device")
    done = finish_rollback(result.state, actor=AUTO, now=1200.0)
    assert done.state.status == "rolled_back" and done.state.terminal
    assert done.transition == Transition(
        "rel-1", "rolling_back", 0, "rolled_back", 0, done.transition.reason, AUTO, 1200.0
    )
    for action in (promote, pause, resume, rollback):
        with pytest.raises(RolloutTransitionError, match="rolled_back"):
            action(done.state, actor="alice", now=1300.0)
    assert evaluate(done.state, healthy(0), 1400.0).transitions == ()


def test_healthy_canary_is_promoted_after_soak_and_completes() -> None:
    state = running(at=0.0)
    assert evaluate(state, healthy(0), 599.0).transitions == ()  # healthy but still soaking
    result = evaluate(state, healthy(0), 600.0)
    (t,) = result.transitions
    assert (t.from_status, t.from_stage, t.to_status, t.to_stage, t.actor, t.at) == (
        "running",
        0,
        "running",
        1,
        AUTO,
        600.0,
    )
    assert "stage 'canary' healthy" in t.reason
    state = result.state
    assert state.current_stage == "wide" and state.stage_started_at == 600.0  # soak restarts
    state = evaluate(state, healthy(1, n=20), 600.0 + 1800).state
    assert state.current_stage == "all"
    final = evaluate(state, healthy(2, n=50), 600.0 + 1800 + 3600)
    assert final.state.status == "completed"
    assert final.state.serves("any-device")
    with pytest.raises(RolloutTransitionError, match="cannot promote a completed rollout"):
        promote(final.state, actor="alice", now=1e5)
    # a completed release can still be taken back by hand
    assert rollback(final.state, actor="bob", now=1e5).state.status == "rolling_back"


def test_on_failure_halt_waits_for_a_human() -> None:
    state = running(plan(on_failure="halt"), at=0.0)
    result = evaluate(state, HealthSnapshot(0, installs_ok=5, latency_p50_ms=30.0, baseline_p50_ms=10.0), 5.0)
    assert result.state.status == "halted"
    assert len(result.transitions) == 1 and "p50 latency / previous release 3 > 1.5" in result.transitions[0].reason
    assert evaluate(result.state, healthy(0), 10_000.0).transitions == ()  # halted is not judged
    with pytest.raises(RolloutTransitionError, match="cannot promote a halted rollout"):
        promote(result.state, actor="alice", now=10.0)
    again = resume(result.state, actor="alice", now=50.0, reason="latency baseline was wrong")
    assert again.state.status == "running" and again.state.stage_started_at == 50.0
    assert again.transition.actor == "alice" and again.transition.reason == "latency baseline was wrong"


def test_pause_blocks_automatic_promotion_and_resume_restarts_soak() -> None:
    state = running(at=0.0)
    paused = pause(state, actor="alice", now=100.0).state
    assert paused.status == "paused"
    canary = next(f"d{i}" for i in range(10_000) if first_stage(plan(), "rel-1", f"d{i}") == 0)
    later = next(f"d{i}" for i in range(10_000) if first_stage(plan(), "rel-1", f"d{i}") > 0)
    assert paused.serves(canary) and not paused.serves(later)  # pausing keeps the stage reached
    assert evaluate(paused, healthy(0), 10_000.0).transitions == ()
    resumed = resume(paused, actor="alice", now=200.0).state
    assert evaluate(resumed, healthy(0), 700.0).transitions == ()  # soak counts from 200
    assert evaluate(resumed, healthy(0), 800.0).state.stage == 1


def test_manual_promote_and_actor_rules() -> None:
    state = running(at=0.0)
    step = promote(state, actor="alice", now=5.0)
    assert step.state.stage == 1 and step.transition.actor == "alice"
    with pytest.raises(UsageError, match="reserved for automatic"):
        promote(state, actor=AUTO, now=5.0)
    with pytest.raises(UsageError, match="actor must be a user name"):
        pause(state, actor="", now=5.0)
    with pytest.raises(RolloutTransitionError, match="cannot resume a running rollout") as info:
        resume(state, actor="alice", now=5.0)
    assert info.value.details == {"action": "resume", "status": "running"}
    with pytest.raises(RolloutTransitionError, match="cannot start a running rollout"):
        start(state, actor="alice", now=5.0)
    with pytest.raises(RolloutTransitionError, match="cannot promote a pending rollout"):
        promote(new_rollout("r", plan()), actor="alice", now=0.0)
    with pytest.raises(UsageError, match="now must be a finite number"):
        pause(state, actor="alice", now=float("inf"))


def test_snapshot_for_another_stage_is_refused() -> None:
    with pytest.raises(UsageError, match=r"snapshot is for stage 1 but rollout rel-1 is at stage 0 .'canary'."):
        evaluate(running(), healthy(1), 5000.0)


def test_state_round_trips_and_bad_records_are_refused() -> None:
    state = evaluate(running(at=0.0), healthy(0), 600.0).state
    assert RolloutState.from_dict(state.to_dict()) == state
    doc = state.to_dict()
    with pytest.raises(SpecError, match="status must be one of"):
        RolloutState.from_dict({**doc, "status": "exploded"})
    with pytest.raises(SpecError, match="stage must be an index"):
        RolloutState.from_dict({**doc, "stage": 7})
    with pytest.raises(SpecError, match="unknown field"):
        RolloutState.from_dict({**doc, "x": 1})
    with pytest.raises(SpecError, match="needs stage_started_at"):
        RolloutState.from_dict({**doc, "stage_started_at": None})
    with pytest.raises(SpecError, match="completed rollout is at its last stage"):
        RolloutState.from_dict({**doc, "status": "completed"})


# --- any sequence of events ----------------------------------------------------------------
def _violated(criteria: HealthCriteria, s: HealthSnapshot) -> bool:
    """An independent statement of "some criterion is violated" (the test's own arithmetic)."""
    n = s.installs_ok + s.installs_failed
    if n and s.installs_ok < criteria.min_install_success_rate * n:
        return True
    if n and s.smoke_failures > criteria.max_smoke_failure_rate * n:
        return True
    if s.predictions and s.prediction_errors > criteria.max_error_rate * s.predictions:
        return True
    return bool(
        s.latency_p50_ms is not None
        and s.baseline_p50_ms
        and s.latency_p50_ms > criteria.max_latency_ratio * s.baseline_p50_ms
    )


# Legal (status -> allowed) per manual action, as the docs state it.
LEGAL: dict[str, set[str]] = {
    "start": {"pending"},
    "promote": {"running"},
    "pause": {"running"},
    "resume": {"paused", "halted"},
    "rollback": {"running", "paused", "halted", "completed"},
    "finish_rollback": {"rolling_back"},
}
ACTIONS: dict[str, Any] = {
    "start": start,
    "promote": promote,
    "pause": pause,
    "resume": resume,
    "rollback": rollback,
    "finish_rollback": finish_rollback,
}


class RolloutMachine(RuleBasedStateMachine):
    @initialize(on_failure=st.sampled_from(["rollback", "halt"]), small=st.booleans())
    def setup(self, on_failure: str, small: bool) -> None:
        criteria = HealthCriteria(min_reports=3, min_soak_s=10.0, max_smoke_failure_rate=0.1) if small else CANARY
        self.plan = RolloutPlan(
            stages=(RolloutStage("canary", 0.1, criteria), RolloutStage("all", 1.0, criteria)),
            on_failure=on_failure,
        )
        self.state = new_rollout("rel-sm", self.plan)
        self.now = 0.0
        self.log: list[Transition] = []
        self.was_rolled_back = False

    def _record(self, old: RolloutState, transitions: tuple[Transition, ...], new: RolloutState) -> None:
        prev_status, prev_stage = old.status, old.stage
        for t in transitions:
            assert (t.from_status, t.from_stage) == (prev_status, prev_stage)  # chained, no gaps
            assert t.to_status in STATUSES and t.at == self.now and t.release_id == "rel-sm"
            assert t.to_stage >= t.from_stage  # stages never go backwards
            prev_status, prev_stage = t.to_status, t.to_stage
        assert (new.status, new.stage) == (prev_status, prev_stage)
        self.log.extend(transitions)
        self.state = new

    @rule(seconds=st.floats(0, 2000, allow_nan=False))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule(action=st.sampled_from(sorted(ACTIONS)), who=st.sampled_from(["alice", "bob"]))
    def manual(self, action: str, who: str) -> None:
        old = self.state
        if old.status not in LEGAL[action]:
            with pytest.raises(RolloutTransitionError):
                ACTIONS[action](old, actor=who, now=self.now)
            assert self.state is old
            return
        step = ACTIONS[action](old, actor=who, now=self.now)
        assert step.transition.actor == who
        self._record(old, (step.transition,), step.state)

    @rule(
        ok=st.integers(0, 30),
        failed=st.integers(0, 5),
        smoke=st.integers(0, 3),
        preds=st.integers(0, 200),
        errs=st.integers(0, 20),
        lat=st.none() | st.floats(1, 40),
        base=st.none() | st.floats(1, 40),
    )
    def auto(
        self, ok: int, failed: int, smoke: int, preds: int, errs: int, lat: float | None, base: float | None
    ) -> None:
        smoke = min(smoke, ok + failed)
        errs = min(errs, preds)
        old = self.state
        snap = HealthSnapshot(old.stage, ok, failed, smoke, preds, errs, lat, base)
        result = evaluate(old, snap, self.now)
        if old.status != "running":
            assert result.transitions == () and result.state is old and result.verdict is None
            return
        assert result.verdict is not None
        criteria = self.plan.stages[old.stage].health
        if _violated(criteria, snap):
            # a failing criterion never promotes
            assert all(t.to_status in ("halted", "rolling_back") for t in result.transitions)
            assert result.state.stage == old.stage and result.state.status != "completed"
        else:
            assert result.verdict.decision != "fail"
        if result.transitions and result.transitions[0].to_status == "halted":
            expected = 2 if self.plan.on_failure == "rollback" else 1
            assert len(result.transitions) == expected
        for t in result.transitions:
            assert t.actor == AUTO
        self._record(old, result.transitions, result.state)

    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "state"):
            return
        s = self.state
        assert s.status in STATUSES and 0 <= s.stage < len(self.plan.stages)
        RolloutState.from_dict(s.to_dict())  # every reachable state is a valid record
        if s.status == "rolled_back":
            self.was_rolled_back = True
        if self.was_rolled_back:
            assert s.status == "rolled_back"  # terminal
        if s.status == "completed":
            assert s.stage == len(self.plan.stages) - 1

    @precondition(lambda self: hasattr(self, "state") and self.state.status == "rolled_back")
    @rule()
    def rolled_back_is_terminal(self) -> None:
        for action, fn in ACTIONS.items():
            with pytest.raises(RolloutTransitionError):
                fn(self.state, actor="alice", now=self.now)
            assert action  # every action refused
        # the way forward is a new release: a fresh rollout with a new id starts cleanly
        fresh = start(new_rollout("rel-sm-2", self.plan), actor="alice", now=self.now).state
        assert fresh.status == "running" and fresh.stage == 0


RolloutMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestRolloutMachine = RolloutMachine.TestCase


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 50),
    st.integers(0, 50),
    st.integers(0, 50),
    st.floats(0, 10_000, allow_nan=False),
)
def test_judge_never_passes_a_violation(ok: int, failed: int, smoke: int, elapsed: float) -> None:
    assume(smoke <= ok + failed)
    snap = HealthSnapshot(0, installs_ok=ok, installs_failed=failed, smoke_failures=smoke)
    v = judge(CANARY, snap, elapsed)
    if _violated(CANARY, snap):
        assert v.decision in ("fail", "wait")
    if v.decision == "pass":
        assert ok + failed >= CANARY.min_reports and elapsed >= CANARY.min_soak_s


def test_min_predictions_gates_passing_but_never_delays_a_failure() -> None:
    criteria = HealthCriteria(min_reports=2, min_predictions=100, max_error_rate=0.05)
    healthy = HealthSnapshot(stage=0, installs_ok=2, predictions=99)
    verdict = judge(criteria, healthy, 10.0)
    assert verdict.decision == "wait" and "predictions 99 < 100" in verdict.reason
    assert judge(criteria, HealthSnapshot(stage=0, installs_ok=2, predictions=100), 10.0).decision == "pass"
    erring = HealthSnapshot(stage=0, installs_ok=2, predictions=6, prediction_errors=6)
    verdict = judge(criteria, erring, 0.0)
    assert verdict.decision == "fail" and "prediction error rate 1 > 0.05" in verdict.reason
    assert HealthCriteria.from_dict(criteria.to_dict()) == criteria


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 60),
    fractions=st.lists(st.floats(0.01, 0.99), min_size=0, max_size=4, unique=True),
    seed=st.integers(0, 2**32 - 1),
)
def test_stage_assignment_by_rank_is_stable_fills_every_stage_it_can_and_ignores_order(
    n: int, fractions: list[float], seed: int
) -> None:
    from random import Random

    from tinymlops.release.rollouts import assign_stages

    stages = [RolloutStage(f"s{i}", f) for i, f in enumerate(sorted(fractions))] + [RolloutStage("all", 1.0)]
    plan = RolloutPlan(tuple(stages))
    devices = [f"dev{seed}-{i}" for i in range(n)]
    out = assign_stages(plan, "0123456789abcdef", devices)
    shuffled = devices[:]
    Random(seed).shuffle(shuffled)
    assert assign_stages(plan, "0123456789abcdef", shuffled) == out  # input order does not matter
    assert set(out) == set(devices)
    for k, stage in enumerate(plan.stages):  # stage k covers exactly max(1, ceil(f*N)) devices (at most N)
        covered = sum(1 for s in out.values() if s <= k)
        assert covered == min(n, max(1, math.ceil(stage.fraction * n - 1e-9)))
    # the devices of earlier stages are those with the lowest cohort positions
    ranked = sorted(devices, key=lambda d: (cohort_position("0123456789abcdef", d), d))
    assert [out[d] for d in ranked] == sorted(out.values())
