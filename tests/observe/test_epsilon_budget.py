"""The epsilon budget can never be exceeded: a hypothesis state machine spends, refuses, starts
windows, moves the clock back and forth and restores the budget from its serialized state, while
an independent model checks every cap after every step with exact fractions."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tinymlops.errors import PrivacyBudgetExceeded, SpecError, UsageError
from tinymlops.observe.privacy import DAY_S, EpsilonBudget

epsilons = st.floats(min_value=1e-6, max_value=3.0, allow_nan=False) | st.sampled_from([0.1, 0.5, 1.0, 1 / 3])


class BudgetMachine(RuleBasedStateMachine):
    @initialize(
        per_window=st.sampled_from([1.0, 2.5, 0.3]),
        per_day=st.sampled_from([2.0, 5.0, 7.3]),
        start=st.floats(0, 1e9),
    )
    def start(self, per_window: float, per_day: float, start: float) -> None:
        self.budget = EpsilonBudget(per_window, per_day)
        self.per_window, self.per_day = Fraction(per_window), Fraction(per_day)
        self.clock = start  # the device clock (may go back)
        self.effective = 0.0  # the budget's clock: never backwards
        self.accepted: list[tuple[float, Fraction]] = []  # (effective time, epsilon)
        self.window = Fraction(0)

    @rule(epsilon=epsilons, step=st.floats(-2 * DAY_S, 2 * DAY_S) | st.sampled_from([0.0, 59.0, DAY_S, DAY_S + 61]))
    def spend(self, epsilon: float, step: float) -> None:
        self.clock = max(0.0, self.clock + step)
        before = json.dumps(self.budget.to_dict())
        could = self.budget.can_spend(epsilon, self.clock)
        try:
            self.budget.spend(epsilon, self.clock)
        except PrivacyBudgetExceeded as exc:
            assert not could
            assert exc.details["cap"] in ("window", "day")
            assert json.dumps(self.budget.to_dict()) == before  # a refusal spends nothing
            return
        assert could
        self.effective = max(self.effective, self.clock)
        self.accepted.append((self.effective, Fraction(epsilon)))
        self.window += Fraction(epsilon)

    @rule()
    def next_window(self) -> None:
        self.budget.next_window()
        self.window = Fraction(0)

    @rule()
    def restart(self) -> None:
        """The device restarts: the budget comes back from its persisted JSON."""
        self.budget = EpsilonBudget.from_dict(json.loads(json.dumps(self.budget.to_dict())))

    @invariant()
    def never_exceeded(self) -> None:
        if not hasattr(self, "budget"):
            return
        assert self.window <= self.per_window
        assert Fraction(self.budget.window_spent()) == self.window or math.isclose(
            self.budget.window_spent(), float(self.window)
        )
        # every 24-hour span of the budget's clock: any span holding spends holds them within a day
        # of its last one, so checking the spans ending at each accepted spend covers them all
        for end, _ in self.accepted:
            total = sum((eps for t, eps in self.accepted if end - DAY_S < t <= end), Fraction(0))
            assert total <= self.per_day, (end, total)


BudgetMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_the_budget_is_never_exceeded = BudgetMachine.TestCase


def test_refusals_say_which_cap_and_what_remains() -> None:
    budget = EpsilonBudget(per_window=1.0, per_day=1.5)
    budget.spend(0.75, at=100.0)
    with pytest.raises(PrivacyBudgetExceeded, match="per-window cap") as exc:
        budget.spend(0.5, at=101.0)
    assert exc.value.details == {"cap": "window", "requested": 0.5, "remaining": 0.25}
    budget.next_window()
    budget.spend(0.5, at=102.0)
    budget.next_window()
    with pytest.raises(PrivacyBudgetExceeded, match="24-hour cap") as exc:
        budget.spend(0.5, at=103.0)
    assert exc.value.details["cap"] == "day" and exc.value.details["remaining"] == 0.25
    assert budget.remaining(103.0) == 0.25
    assert isinstance(exc.value, UsageError) and exc.value.exit_code == 2


def test_setting_the_clock_back_frees_nothing() -> None:
    budget = EpsilonBudget(per_window=10.0, per_day=1.0)
    budget.spend(1.0, at=5 * DAY_S)
    budget.next_window()
    assert not budget.can_spend(0.1, at=0.0)  # "a week ago" is still now for the budget
    assert not budget.can_spend(0.1, at=5 * DAY_S + DAY_S - 120)
    assert budget.can_spend(1.0, at=6 * DAY_S + 60)


def test_corrupt_state_is_refused() -> None:
    good = EpsilonBudget(1.0, 2.0)
    good.spend(0.5, at=1000.0)
    state = good.to_dict()
    for bad in (
        {**state, "version": 2},
        {**state, "spends": [[1.0, "-1/2"]]},
        {**state, "window_spent": "abc"},
        {**state, "clock": math.nan},
        {**state, "spends": [[2000.0, "1/2"], [1000.0, "1/2"]]},
        {**state, "extra": 1},
        [state],
    ):
        with pytest.raises(SpecError, match="epsilon budget state"):
            EpsilonBudget.from_dict(bad)
    assert EpsilonBudget.from_dict(state).to_dict() == state
    with pytest.raises(UsageError):
        EpsilonBudget(0, 1)
    with pytest.raises(UsageError, match="epsilon"):
        good.spend(-0.1, at=1.0)
