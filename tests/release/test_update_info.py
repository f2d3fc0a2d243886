"""The update contract (``tinymlops.spec.update``): target paths and custom target info."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.errors import SpecError, UnsupportedVersionError
from tinymlops.spec.update import TargetPath, UpdateInfo, cohort_target_path, device_target_path

NAME_CHARS = string.ascii_letters + string.digits + "_.-"
names = st.text(alphabet=NAME_CHARS, min_size=0, max_size=63).map(lambda s: "a" + s)
infos = st.builds(
    UpdateInfo,
    bundle_id=st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    model=st.text(min_size=1, max_size=40),
    version=st.integers(min_value=1, max_value=10**6),
    variant=st.text(max_size=40),
    ref=st.text(min_size=1, max_size=40),
    target=st.text(min_size=1, max_size=40),
    size=st.integers(min_value=0, max_value=2**40),
    urgent=st.booleans(),
    release_id=st.none() | st.text(min_size=1, max_size=40),
    published_at=st.sampled_from(["", "2030-01-01T00:00:00+00:00"]),
)


_GOOD = UpdateInfo(bundle_id="0" * 32, model="m", version=1, variant="", ref="m:1", target="t", size=3).to_dict()


@given(scope=st.sampled_from(["devices", "cohorts"]), name=names)
def test_target_paths_round_trip(scope: str, name: str) -> None:
    tp = TargetPath(scope, name)
    assert TargetPath.parse(tp.path) == tp
    assert tp.path.count("/") == 2 and ".." not in tp.path.split("/")
    served = f"{tp.scope}/{tp.name}/{'ab' * 32}.bundle.tmlb"
    assert TargetPath.from_served_name(served) == (tp, "ab" * 32)


def test_target_path_helpers() -> None:
    assert device_target_path("0123abcd") == "devices/0123abcd/bundle.tmlb"
    assert cohort_target_path("pilot") == "cohorts/pilot/bundle.tmlb"


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_target_path_parser_accepts_only_the_layout(text: str) -> None:
    try:
        tp = TargetPath.parse(text)
    except SpecError:
        return
    assert tp.path == text  # anything accepted is exactly canonical
    assert tp.scope in ("devices", "cohorts") and "/" not in tp.name and tp.name not in (".", "..")


@pytest.mark.parametrize(
    "bad",
    [
        "devices/../bundle.tmlb",
        "devices/./bundle.tmlb",
        "devices//bundle.tmlb",
        "devices/a/b/bundle.tmlb",
        "devices/a/other.tmlb",
        "firmware/a/bundle.tmlb",
        "/devices/a/bundle.tmlb",
        "devices/.hidden/bundle.tmlb",
        "devices/" + "a" * 65 + "/bundle.tmlb",
        "devices/a b/bundle.tmlb",
    ],
)
def test_bad_target_paths_are_refused(bad: str) -> None:
    with pytest.raises(SpecError):
        TargetPath.parse(bad)


@given(infos)
def test_update_info_round_trips_through_json(info: UpdateInfo) -> None:
    doc = json.loads(json.dumps(info.to_dict()))
    assert UpdateInfo.from_dict(doc) == info


@given(infos, st.dictionaries(st.text(min_size=1, max_size=10).map(lambda k: "x_" + k), st.integers(), max_size=5))
def test_unknown_fields_of_a_newer_minor_version_are_kept(info: UpdateInfo, extra: dict[str, int]) -> None:
    doc = {**info.to_dict(), **extra, "spec_version": "1.7"}
    parsed = UpdateInfo.from_dict(doc)
    assert parsed.to_dict() == doc


def test_update_info_is_strict_about_known_fields() -> None:
    good = UpdateInfo(bundle_id="0" * 32, model="m", version=1, variant="", ref="m:1", target="t", size=3).to_dict()
    UpdateInfo.from_dict(good)
    cases = {
        "bundle_id": "XYZ",
        "version": 0,
        "size": -1,
        "urgent": "yes",
        "release_id": "",
        "published_at": "yesterday",
        "model": "",
    }
    for key, value in cases.items():
        with pytest.raises(SpecError, match=key):
            UpdateInfo.from_dict({**good, key: value})
    for key in ("bundle_id", "model", "ref", "target", "size", "spec_version"):
        with pytest.raises(SpecError):
            UpdateInfo.from_dict({k: v for k, v in good.items() if k != key})
    with pytest.raises(UnsupportedVersionError):
        UpdateInfo.from_dict({**good, "spec_version": "2.0"})
    with pytest.raises(SpecError, match="must be an object"):
        UpdateInfo.from_dict(["not", "an", "object"])
    with pytest.raises(SpecError, match="fields"):
        UpdateInfo.from_dict({**good, **{f"x{i}": i for i in range(100)}})


values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.lists(st.integers())


@given(st.dictionaries(st.sampled_from([*_GOOD, "extra"]), values))
def test_any_mutation_of_custom_info_parses_or_is_a_spec_error(changes: dict[str, object]) -> None:
    doc = {**_GOOD, **changes}
    try:
        info = UpdateInfo.from_dict(doc)
    except SpecError:
        return
    assert UpdateInfo.from_dict(info.to_dict()) == info  # whatever is accepted is consistent
