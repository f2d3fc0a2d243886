"""A license's validity window as an operator gives it — to the API (``valid_from``, ``valid_days`` /
``valid_until``), the CLI (``--from``, ``--days`` / ``--until``) and the dashboard (days) — turned into
the whole epoch seconds a :class:`~tinymlops.spec.license.License` carries.

Dates are read by the one parser the server and the CLI share for times,
:func:`tinymlops.observe.fleet_drift.parse_instant` (ISO 8601; a date alone is midnight, a time
without an offset is UTC); a fraction of a second rounds down. Every refusal is a
:class:`~tinymlops.errors.UsageError` naming the field or option (``details["field"]``).

Server and CLI side (the parser's module is not in the edge closure, nor is this one).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from tinymlops.errors import UsageError
from tinymlops.spec.license import MAX_EPOCH

DAY_S = 86_400
#: the longest validity an operator may give in days (100 years)
MAX_VALID_DAYS = 36_500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def license_time(text: str, field: str) -> int:
    """``text`` (an ISO 8601 date or date-time; UTC when it names no offset) as whole seconds since the
    epoch, or a UsageError naming ``field``."""
    from tinymlops.observe.fleet_drift import parse_instant

    try:
        at = parse_instant(text, field)
    except UsageError as exc:
        raise UsageError(exc.message, field=field) from None
    seconds = math.floor((at - _EPOCH).total_seconds())
    if not 0 <= seconds < MAX_EPOCH:
        raise UsageError(f"{field}: {text!r:.60} is before 1970 or after the year 33000", field=field)
    return seconds


def validity_end(
    *,
    days: int | None,
    until: str | None,
    start: int | None,
    now: float,
    required: bool,
    names: tuple[str, str] = ("valid_days", "valid_until"),
) -> int | None:
    """The end (exclusive) of a validity given as ``days`` counted from ``start`` (None: ``now``) or as
    the date ``until``; None when neither is given and the end is not ``required`` (a top-up keeps the
    end of the license it tops up). It must come after the start (or now). ``names`` are the two
    fields as the caller's user knows them (``("--days", "--until")`` on the command line)."""
    days_name, until_name = names
    if days is not None and until is not None:
        raise UsageError(f"give either {days_name} or {until_name}, not both", field=until_name)
    since = start if start is not None else math.floor(now)
    if until is not None:
        end = license_time(until, until_name)
    elif days is not None:
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_VALID_DAYS:
            raise UsageError(f"{days_name} must be a whole number from 1 to {MAX_VALID_DAYS}", field=days_name)
        end = since + days * DAY_S
    elif required:
        raise UsageError(f"give {days_name} or {until_name}: a license needs an end", field=until_name)
    else:
        return None
    if end <= since:
        after = "the start" if start is not None else "now"
        raise UsageError(f"{until_name} {until} is not after {after}: the license would be dead", field=until_name)
    return end


__all__ = ["DAY_S", "MAX_VALID_DAYS", "license_time", "validity_end"]
