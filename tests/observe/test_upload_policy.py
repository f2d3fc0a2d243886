"""The upload policy (tinymlops.observe.upload_policy.decide): consent, network, charging and the rolling
24-hour byte cap, as properties over generated policies, contexts and send logs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.errors import UsageError
from tinymlops.observe.upload_policy import DAY_S, UploadPolicy, decide, sent_within_day
from tinymlops.spec.context import DeviceContext

NOW = 1_700_000_000.0

policies = st.builds(
    UploadPolicy,
    consent=st.booleans(),
    wifi_only=st.booleans(),
    only_charging=st.booleans(),
    max_bytes_per_day=st.none() | st.integers(1, 10_000),
)
contexts = st.builds(
    DeviceContext,
    battery=st.floats(0.0, 1.0),
    charging=st.booleans(),
    network=st.sampled_from(["wifi", "cellular", "offline"]),
)
sends = st.lists(st.tuples(st.floats(NOW - 3 * DAY_S, NOW + 600.0), st.integers(0, 5_000)), max_size=20)


@settings(max_examples=400, deadline=None)
@given(policies, contexts, sends, st.integers(0, 12_000))
def test_every_rule_holds_for_every_allowed_upload(policy, context, sent, size) -> None:
    d = decide(policy, context, sent, NOW, batch_bytes=size)
    if d.allowed:
        assert policy.consent
        assert context.network != "offline"
        assert not (policy.wifi_only and context.network != "wifi")
        assert not (policy.only_charging and not context.charging)
        if policy.max_bytes_per_day is not None:
            assert sent_within_day(sent, NOW) + max(size, 1) <= policy.max_bytes_per_day
            assert d.allowance is not None and d.allowance >= size
    else:
        assert d.reason
    # the rules other than the cap are exactly these: with them met and no cap, it is allowed
    open_policy = UploadPolicy(consent=True, wifi_only=policy.wifi_only, only_charging=policy.only_charging)
    expected = context.network != "offline" and not (policy.wifi_only and context.network != "wifi")
    expected = expected and not (policy.only_charging and not context.charging)
    assert decide(open_policy, context, sent, NOW, batch_bytes=size).allowed == expected


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10_000), sends, st.integers(1, 10_000))
def test_the_cap_refuses_until_retry_at_and_allows_then(cap, sent, size) -> None:
    policy = UploadPolicy(consent=True, max_bytes_per_day=cap)
    wifi = DeviceContext(network="wifi")
    d = decide(policy, wifi, sent, NOW, batch_bytes=size)
    assert d.allowed == (sent_within_day(sent, NOW) + size <= cap)
    if not d.allowed and size <= cap:
        assert d.retry_at is not None and d.retry_at >= NOW
        assert decide(policy, wifi, sent, d.retry_at, batch_bytes=size).allowed  # exactly when it said
        if d.retry_at > NOW:
            assert not decide(policy, wifi, sent, d.retry_at - 1e-3, batch_bytes=size).allowed
    if size > cap:  # never: a body larger than a whole day's allowance
        assert not d.allowed and d.retry_at is None


@settings(max_examples=200, deadline=None)
@given(policies, contexts, sends, st.integers(0, 5_000), st.integers(0, 5_000))
def test_sending_more_never_makes_an_upload_allowed(policy, context, sent, extra, size) -> None:
    before = decide(policy, context, sent, NOW, batch_bytes=size).allowed
    after = decide(policy, context, [*sent, (NOW, extra)], NOW, batch_bytes=size).allowed
    assert after <= before


def test_defaults_and_each_reason() -> None:
    wifi, cellular = DeviceContext(network="wifi", charging=True), DeviceContext(network="cellular", charging=True)
    assert not decide(UploadPolicy(), wifi, [], NOW).allowed  # no consent by default
    assert "consent" in decide(UploadPolicy(), wifi, [], NOW).reason
    consent = UploadPolicy(consent=True)
    assert decide(consent, wifi, [], NOW).allowed
    assert "Wi-Fi" in decide(consent, cellular, [], NOW).reason
    assert decide(UploadPolicy(consent=True, wifi_only=False), cellular, [], NOW).allowed
    assert decide(consent, DeviceContext(network="offline"), [], NOW).reason == "offline"
    assert "charging" in decide(UploadPolicy(consent=True, only_charging=True), DeviceContext(), [], NOW).reason
    capped = UploadPolicy(consent=True, max_bytes_per_day=1000)
    d = decide(capped, wifi, [(NOW - DAY_S + 10, 600), (NOW - 5, 300)], NOW, batch_bytes=200)
    assert not d.allowed and d.allowance == 100 and d.retry_at == NOW + 10
    # a send stamped in the future (the clock was set back) still counts
    assert decide(capped, wifi, [(NOW + 3600, 1000)], NOW).allowance == 0
    # a send exactly 24 hours old has aged out
    assert decide(capped, wifi, [(NOW - DAY_S, 1000)], NOW, batch_bytes=1000).allowed


@pytest.mark.parametrize(
    "kwargs",
    [{"consent": "yes"}, {"max_bytes_per_day": 0}, {"max_bytes_per_day": True}, {"wifi_only": 1}],
)
def test_a_bad_policy_is_refused(kwargs) -> None:
    with pytest.raises(UsageError):
        UploadPolicy(**kwargs)
    with pytest.raises(UsageError):
        decide(UploadPolicy(consent=True), DeviceContext(), [], float("nan"))
