"""The install report contract: strict parsing with errors naming the field, round trips, and the
device-side conversion from an InstallResult that never refuses to report."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.errors import SpecError, UnsupportedVersionError
from tinymlops.spec.install_report import INSTALL_STATUSES, MAX_REASON_CHARS, InstallReport

HEX32 = st.text("0123456789abcdef", min_size=32, max_size=32)
HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)
reports = st.builds(
    InstallReport,
    status=st.sampled_from(INSTALL_STATUSES),
    reason=st.text(max_size=200),
    bundle_id=st.none() | HEX32,
    sha256=st.none() | HEX64,
    slot=st.sampled_from([None, "a", "b"]),
    active_bundle_id=st.none() | HEX32,
    error=st.none() | st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.]{0,40}\Z"),
    timings=st.dictionaries(st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z"), st.floats(0, 1e6, allow_nan=False), max_size=8),
    at=st.floats(0, 4e9, allow_nan=False),
)


@given(reports)
@settings(max_examples=200, deadline=None)
def test_round_trip(report: InstallReport) -> None:
    assert InstallReport.from_dict(report.to_dict()) == report


def _doc(**overrides: Any) -> dict[str, Any]:
    doc = InstallReport("installed", "ok", bundle_id="0" * 32).to_dict()
    doc.update(overrides)
    return doc


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"status": "exploded"}, "status"),
        ({"status": None}, "status"),
        ({"bundle_id": "A" * 32}, "bundle_id"),
        ({"sha256": "0" * 63}, "sha256"),
        ({"slot": "c"}, "slot"),
        ({"timings": {"Total": 1.0}}, "Total"),
        ({"timings": {"total_s": -1.0}}, "total_s"),
        ({"timings": {"total_s": math.inf}}, "total_s"),
        ({"timings": {"total_s": True}}, "total_s"),
        ({"timings": {f"t{i}": 0.0 for i in range(33)}}, "timings"),
        ({"at": -1}, "at"),
        ({"at": "now"}, "at"),
        ({"reason": "x" * (MAX_REASON_CHARS + 1)}, "reason"),
        ({"reason": 3}, "reason"),
        ({"error": "two words"}, "error"),
        ({"surprise": 1}, "surprise"),
        ({"spec_version": "one"}, "spec_version"),
    ],
)
def test_bad_documents_are_refused_naming_the_field(overrides: dict[str, Any], names: str) -> None:
    with pytest.raises(SpecError, match=names):
        InstallReport.from_dict(_doc(**overrides))


def test_only_an_unsupported_major_version_is_refused() -> None:
    assert InstallReport.from_dict(_doc(spec_version="1.7")).spec_version == "1.7"
    with pytest.raises(UnsupportedVersionError):
        InstallReport.from_dict(_doc(spec_version="2.0"))
    with pytest.raises(SpecError, match="must be an object"):
        InstallReport.from_dict([_doc()])
    with pytest.raises(SpecError, match="status"):
        InstallReport("exploded")


def test_from_an_agents_result_shortens_rather_than_refuses() -> None:
    result = {
        "event": "install",
        "status": "failed",
        "reason": "y" * (MAX_REASON_CHARS + 500),
        "bundle_id": "a" * 32,
        "sha256": "b" * 64,
        "slot": "b",
        "active_bundle_id": None,
        "error": "StageError",
        "timings": {f"s{i}_s": 0.001 for i in range(40)},
        "at": 1.5,
    }
    report = InstallReport.from_result_dict(result)
    assert len(report.reason) == MAX_REASON_CHARS and report.reason.endswith("…")
    assert len(report.timings) == 32 and report.status == "failed" and report.error == "StageError"
