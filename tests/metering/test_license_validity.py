"""A license's validity as operators give it (metering.validity): the one date reading the API and
the CLI share, and the end from days or a date — hypothesis over any text."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from tinymlops.errors import UsageError
from tinymlops.metering.validity import DAY_S, MAX_VALID_DAYS, license_time, validity_end
from tinymlops.spec.license import MAX_EPOCH

NOW = 1_900_000_000.5
#: the first call imports the parser's module (lazily, as the CLI does): no per-example deadline
UNTIMED = settings(deadline=None)
MIDNIGHT_2031_01_31 = 1_927_584_000


@UNTIMED
@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.timezones()))
def test_a_date_time_with_an_offset_is_its_epoch_second(at: datetime) -> None:
    assume(at.utcoffset() is not None)
    expected = math.floor((at - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    assume(expected >= 0)
    assert license_time(at.isoformat(), "valid_until") == expected


@UNTIMED
@given(st.text(max_size=64))
@example("0001-01-01T00:00:00+14:00")
@example("9999-12-31T23:59:59-23:59")
@example("1969-12-31T23:59:59Z")
@example("2030-01-31T12:00:00.999999Z")
def test_any_text_is_an_epoch_second_or_a_usage_error_naming_the_field(text: str) -> None:
    try:
        seconds = license_time(text, "--from")
    except UsageError as exc:
        assert exc.message.startswith("--from: ") and exc.details["field"] == "--from"
    else:
        assert isinstance(seconds, int) and 0 <= seconds < MAX_EPOCH


def test_a_date_is_midnight_and_no_offset_is_utc() -> None:
    assert license_time("2031-01-31", "valid_until") == MIDNIGHT_2031_01_31
    assert license_time(" 2031-01-31T01:00 ", "valid_until") == MIDNIGHT_2031_01_31 + 3600
    assert license_time("2031-01-31T01:00+01:00", "valid_until") == MIDNIGHT_2031_01_31
    assert license_time("2031-01-31T00:00:00.9Z", "valid_until") == MIDNIGHT_2031_01_31  # rounds down


@given(days=st.integers(1, MAX_VALID_DAYS), start=st.none() | st.integers(0, 2 * 10**9))
def test_days_count_from_the_start_or_from_now(days: int, start: int | None) -> None:
    end = validity_end(days=days, until=None, start=start, now=NOW, required=True)
    assert end == (math.floor(NOW) if start is None else start) + days * DAY_S


@pytest.mark.parametrize(
    ("days", "until", "start", "required", "words", "field"),
    [
        (1, "2031-01-31", None, True, "either valid_days or valid_until, not both", "valid_until"),
        (None, None, None, True, "needs an end", "valid_until"),
        (0, None, None, True, "valid_days must be a whole number", "valid_days"),
        (MAX_VALID_DAYS + 1, None, None, False, "valid_days must be a whole number", "valid_days"),
        (True, None, None, False, "valid_days must be a whole number", "valid_days"),
        (None, "2001-01-01", None, False, "is not after now", "valid_until"),
        (None, "2031-01-31", MIDNIGHT_2031_01_31, True, "is not after the start", "valid_until"),
        (None, "soon", None, True, "not an ISO 8601", "valid_until"),
    ],
)
def test_a_validity_that_is_not_one_is_refused_naming_the_field(
    days: int | None, until: str | None, start: int | None, required: bool, words: str, field: str
) -> None:
    with pytest.raises(UsageError, match=words) as exc:
        validity_end(days=days, until=until, start=start, now=NOW, required=required)
    assert exc.value.details["field"] == field


def test_no_end_is_none_unless_required_and_the_options_name_themselves() -> None:
    assert validity_end(days=None, until=None, start=None, now=NOW, required=False) is None
    with pytest.raises(UsageError, match="give either --days or --until") as exc:
        validity_end(days=1, until="2031-01-31", start=None, now=NOW, required=False, names=("--days", "--until"))
    assert exc.value.details["field"] == "--until"
    assert validity_end(days=None, until="2031-01-31", start=None, now=NOW, required=True) == MIDNIGHT_2031_01_31
