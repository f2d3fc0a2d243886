"""The profile mix file: strict parsing with errors naming the line and field, round trips of
generated files, the allocation of N devices over the entries, and the default mix."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.errors import ConfigError, TinyMLOpsError, UsageError
from tinymlops.fleet.mix import DEFAULT_MIX_TOML, Mix, MixEntry, default_mix, load_mix, parse_mix
from tinymlops.targets.catalog import builtin_profiles


# --- a TOML writer for the generated files (the subset a mix uses) -----------------------------------
def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else '"' + k + '"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(v)


def to_toml(doc: dict[str, Any]) -> str:
    """Tables as [headers] (nested ones after their parent's plain keys)."""
    lines: list[str] = []

    def table(path: tuple[str, ...], body: dict[str, Any]) -> None:
        if path:
            lines.append("[" + ".".join(_key(p) for p in path) + "]")
        for k, v in body.items():
            if not isinstance(v, dict):
                lines.append(f"{_key(k)} = {_value(v)}")
        for k, v in body.items():
            if isinstance(v, dict):
                table((*path, k), v)

    table((), doc)
    return "\n".join(lines) + "\n"


# --- generated valid mixes --------------------------------------------------------------------------
names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
tags = st.lists(st.from_regex(r"\A[a-z0-9][a-z0-9._:=-]{0,10}\Z"), max_size=4, unique=True)
unit = st.floats(0.0, 1.0, allow_nan=False)
positive = st.floats(0.01, 1e4, allow_nan=False)


@st.composite
def networks(draw: st.DrawFn) -> dict[str, Any]:
    states = draw(st.lists(st.sampled_from(["wifi", "cellular", "offline"]), unique=True, max_size=3))
    net: dict[str, Any] = {s: draw(st.floats(0.0, 10.0, allow_nan=False)) for s in states}
    if states and not sum(net.values()) > 0:
        net[states[0]] = 1.0
    if draw(st.booleans()):
        mean = draw(positive)
        net["mean_period_s"] = mean
        if draw(st.booleans()):
            net["min_period_s"] = draw(st.floats(0.001, 1.0)) * mean
    return net


@st.composite
def batteries(draw: st.DrawFn) -> dict[str, Any]:
    b: dict[str, Any] = {}
    if draw(st.booleans()):
        lo, hi = sorted([draw(unit), draw(unit)])
        b["initial"] = [lo, hi] if draw(st.booleans()) else lo
    for k in ("drain_per_s", "drain_per_prediction", "charge_per_s"):
        if draw(st.booleans()):
            b[k] = draw(unit)
    if draw(st.booleans()):
        every = draw(positive)
        b["charge_every_s"] = every
        b["charge_for_s"] = draw(unit) * every
    return b


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    e: dict[str, Any] = {}
    if draw(st.booleans()):
        e["profile"] = draw(names)
    share = draw(st.sampled_from(["weight", "count", "none"]))
    if share == "weight":
        e["weight"] = draw(positive)
    elif share == "count":
        e["count"] = draw(st.integers(0, 50))
    if draw(st.booleans()):
        e["tags"] = draw(tags)
    if draw(st.booleans()):
        e["rate"] = draw(st.floats(0.0, 1000.0, allow_nan=False))
    if draw(st.booleans()):
        e["prefer"] = draw(st.sampled_from(["balanced", "accuracy", "latency", "energy", "download"]))
    if draw(st.booleans()):
        e["network"] = draw(networks())
    if draw(st.booleans()):
        e["battery"] = draw(batteries())
    return e


mixes = st.dictionaries(names, entries(), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(mixes)
def test_a_generated_mix_file_parses_to_what_it_says(profiles: dict[str, dict[str, Any]]) -> None:
    mix = parse_mix(to_toml({"spec_version": "1.0", "profiles": profiles}), "gen.toml")
    assert mix.names() == list(profiles)
    for entry, (name, body) in zip(mix.entries, profiles.items(), strict=True):
        assert entry.profile == body.get("profile", name)
        assert entry.count == body.get("count")
        assert entry.weight == (None if "count" in body else body.get("weight", 1.0))
        assert entry.tags == tuple(body.get("tags", ()))
        assert entry.rate == body.get("rate", 1.0)
        assert entry.scenario.prefer == body.get("prefer", "balanced")
        net = body.get("network", {})
        weights = {s: net[s] for s in ("wifi", "cellular", "offline") if s in net} or {"wifi": 1.0}
        assert dict(entry.scenario.network.weights) == weights
        assert entry.scenario.network.mean_period_s == net.get("mean_period_s", 30.0)
        if "battery" not in body:
            assert entry.scenario.battery is None
            continue
        b, parsed = body["battery"], entry.scenario.battery
        assert parsed is not None
        initial = b.get("initial", 1.0)
        assert parsed.initial == (tuple(initial) if isinstance(initial, list) else (initial, initial))
        assert parsed.charge_every_s == b.get("charge_every_s")
        for k, default in (("drain_per_s", 0.001), ("drain_per_prediction", 0.0), ("charge_per_s", 0.01)):
            assert getattr(parsed, k) == b.get(k, default)
    # what to_dict says parses back to the same mix
    again = parse_mix(mix.to_dict(), "again")
    assert [e.to_dict() for e in again.entries] == [e.to_dict() for e in mix.entries]


junk = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
fields = st.sampled_from(
    ["profile", "weight", "count", "tags", "rate", "prefer", "network", "battery", "wifi", "offline", "initial", "x"]
)
near_valid = st.dictionaries(
    names, st.dictionaries(fields, junk | st.dictionaries(fields, junk, max_size=3), max_size=4), max_size=3
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(junk, st.fixed_dictionaries({"profiles": near_valid})))
def test_any_document_parses_or_is_refused_with_a_config_error(doc: Any) -> None:
    try:
        mix = parse_mix(doc, "fuzz")
    except ConfigError as exc:
        assert exc.message.startswith("fuzz")
    else:
        assert isinstance(mix, Mix) and mix.entries


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("[profiles.rpi-4]\nweight = 1\nwieght = 2\n", 3, ["profiles.rpi-4.wieght", "unknown field 'wieght'"]),
        ("[profiles.rpi-4]\nweight = 1\ncount = 2\n", 3, ["profiles.rpi-4.count", "either weight or count"]),
        ("[profiles.rpi-4]\nweight = -1\n", 2, ["profiles.rpi-4.weight", "> 0.0"]),
        ("[profiles.rpi-4]\ncount = 1.5\n", 2, ["count", "integer >= 0"]),
        ('[profiles.rpi-4]\nrate = "fast"\n', 2, ["profiles.rpi-4.rate", "finite number", "'fast'"]),
        ("[profiles.rpi-4]\nrate = 5000\n", 2, ["rate", "<= 1000"]),
        ('[profiles.rpi-4]\ntags = ["EU"]\n', 2, ["profiles.rpi-4.tags", "bad tag 'EU'"]),
        ('[profiles.rpi-4]\ntags = ["eu", "eu"]\n', 2, ["tags", "twice"]),
        ('[profiles.rpi-4]\nprefer = "speed"\n', 2, ["prefer", "one of balanced"]),
        ("[profiles.rpi-4]\n\n[profiles.rpi-4.network]\nwifi = 1\nlte = 1\n", 5, ["profiles.rpi-4.network.lte"]),
        ("[profiles.p]\n[profiles.p.network]\nwifi = 0\noffline = 0\n", 3, ["must not all be 0"]),
        ("[profiles.p]\n[profiles.p.network]\nmean_period_s = 0\n", 3, ["mean_period_s", "> 0.0"]),
        (
            "[profiles.p]\n[profiles.p.network]\nmean_period_s = 2\nmin_period_s = 3\n",
            4,
            ["min_period_s", "must not exceed mean_period_s"],
        ),
        ("[profiles.p]\n[profiles.p.battery]\ndrain_per_s = -0.1\n", 3, ["profiles.p.battery.drain_per_s", ">= 0"]),
        ("[profiles.p]\n[profiles.p.battery]\ninitial = [0.9, 0.1]\n", 3, ["initial", "upside down"]),
        ("[profiles.p]\n[profiles.p.battery]\ninitial = [0.1]\n", 3, ["initial", "[low, high]"]),
        ("[profiles.p]\n[profiles.p.battery]\ninitial = 1.5\n", 3, ["initial", "<= 1.0"]),
        (
            "[profiles.p]\n[profiles.p.battery]\ncharge_every_s = 10\ncharge_for_s = 11\n",
            4,
            ["charge_for_s", "must not exceed charge_every_s"],
        ),
        ("[profiles.p]\n[profiles.p.battery]\ncharge_for_s = 5\n", 3, ["charge_for_s", "needs charge_every_s"]),
        ("[profiles.p]\nbattery = 3\n", 2, ["profiles.p.battery", "must be a table"]),
        ("[profiles.p]\nbattery.drain = 1\n", 2, ["profiles.p.battery.drain", "unknown field"]),
        ('[profiles."bad name"]\n', 1, ["profiles.bad name", "entry name"]),
        ('spec_version = "2.0"\n[profiles.p]\n', 1, ["spec_version", "unsupported version 2.0"]),
        ("spec_version = 1\n[profiles.p]\n", 1, ["spec_version", "'1.0'"]),
        ("profiles = 3\n", 1, ["profiles", "table of entries"]),
        ("[profiles]\n", 1, ["profiles", "empty"]),
        ("seed = 3\n[profiles.p]\n", 1, ["seed", "unknown field"]),
        ("# nothing\n", None, ["profiles", "missing"]),
        (
            '[profiles.p]\n[profiles.p.telemetry]\nconsent = "yes"\n',
            3,
            ["profiles.p.telemetry.consent", "true or false"],
        ),
        ("[profiles.p]\n[profiles.p.telemetry]\nmax_bytes_per_day = 0\n", 3, ["max_bytes_per_day", ">= 1"]),
        ("[profiles.p]\n[profiles.p.telemetry]\nupload = true\n", 3, ["profiles.p.telemetry.upload", "unknown field"]),
        ("[profiles.p]\n[profiles.p.inputs]\nshift_sd = 1\n", 2, ["shift_features", "missing"]),
        ("[profiles.p]\n[profiles.p.inputs]\nshift_features = [1, 1]\n", 3, ["shift_features", "twice"]),
        ("[profiles.p]\n[profiles.p.inputs]\nshift_features = [-1]\n", 3, ["shift_features", "integers >= 0"]),
        ("[profiles.p]\n[profiles.p.inputs]\nshift_features = []\n", 3, ["shift_features", "1 to"]),
        ('[profiles.p]\n[profiles.p.inputs]\nshift_features = [1]\nshift_sd = "big"\n', 4, ["shift_sd", "finite"]),
    ],
)
def test_a_bad_mix_file_is_refused_naming_line_and_field(
    tmp_path: Path, text: str, line: int | None, words: list[str]
) -> None:
    path = tmp_path / "mix.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_mix(path)
    message = info.value.message
    prefix = f"{path}:{line}: " if line is not None else f"{path}: "
    assert message.startswith(prefix), message
    for w in words:
        assert w in message, message
    assert info.value.exit_code == 2


def test_broken_toml_and_unreadable_files_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mix.toml"
    path.write_text("[profiles.p]\nweight = = 1\n")
    with pytest.raises(ConfigError, match=r"mix\.toml: not valid TOML: .*line 2"):
        load_mix(path)
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read the mix file"):
        load_mix(tmp_path / "missing.toml")
    path.write_bytes(b"\xff\xfe[profiles]")
    with pytest.raises(ConfigError, match="cannot read the mix file"):
        load_mix(path)


# --- allocation ------------------------------------------------------------------------------------
shares = st.lists(
    st.one_of(st.tuples(st.just("count"), st.integers(0, 20)), st.tuples(st.just("weight"), positive)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(shares, st.integers(1, 500))
def test_n_devices_are_spread_exactly_over_counts_then_weights(spec: list[tuple[str, float]], n: int) -> None:
    mix = Mix(
        tuple(
            MixEntry(
                name=f"e{i}",
                profile="p",
                weight=value if kind == "weight" else None,
                count=int(value) if kind == "count" else None,
            )
            for i, (kind, value) in enumerate(spec)
        )
    )
    fixed = sum(int(v) for k, v in spec if k == "count")
    weights = [(f"e{i}", v) for i, (k, v) in enumerate(spec) if k == "weight"]
    if fixed > n or (fixed < n and not weights):
        with pytest.raises(UsageError, match="counts add up to"):
            mix.counts(n)
        return
    counts = mix.counts(n)
    assert sum(counts.values()) == n
    for i, (kind, value) in enumerate(spec):
        if kind == "count":
            assert counts[f"e{i}"] == value
    total = sum(v for _, v in weights)
    for name, w in weights:
        quota = (n - fixed) * w / total
        assert math.floor(quota) <= counts[name] <= math.ceil(quota)
    allocated = mix.allocate(n)
    assert len(allocated) == n and allocated == mix.allocate(n)
    assert {e.name: sum(1 for a in allocated if a.name == e.name) for e in mix.entries} == counts


def test_allocation_refuses_a_bad_number_of_devices() -> None:
    for bad in (0, -1, True, 2.0):
        with pytest.raises(UsageError, match="number of devices"):
            default_mix().counts(bad)  # type: ignore[arg-type]


def test_the_default_mix_covers_the_catalog_profiles_and_interleaves_them() -> None:
    mix = default_mix()
    assert mix.profiles() == list(mix.names())
    assert set(mix.profiles()) == set(builtin_profiles())
    first = [e.name for e in mix.allocate(8)]
    assert len(set(first)) >= 5  # a small fleet is still heterogeneous
    assert parse_mix(DEFAULT_MIX_TOML).to_dict() == mix.to_dict()
    phones = mix.entry("android-nnapi-phone").scenario
    assert phones.battery is not None and phones.network.share("offline") > 0
    assert mix.entry("x86-edge-server").scenario.battery is None
    with pytest.raises(UsageError, match="no entry named 'nope'"):
        mix.entry("nope")


def test_errors_are_all_in_the_one_hierarchy() -> None:
    with pytest.raises(TinyMLOpsError):
        parse_mix("[profiles.p]\nrate = -1\n")


def test_telemetry_choices_and_input_shifts_parse_and_round_trip() -> None:
    from tinymlops.fleet.workload import InputShift
    from tinymlops.observe.upload_policy import UploadPolicy

    text = """
[profiles.rpi-4]
tags = ["site-south"]
[profiles.rpi-4.telemetry]
consent = true
wifi_only = false
max_bytes_per_day = 50000
[profiles.rpi-4.inputs]
shift_features = [19, 20, 44]
shift_sd = 0.5

[profiles.x86-edge-server]
"""
    mix = parse_mix(text)
    south, plain = mix.entries
    assert south.upload == UploadPolicy(consent=True, wifi_only=False, max_bytes_per_day=50000)
    assert south.shift == InputShift((19, 20, 44), 0.5)
    assert plain.upload is None and plain.shift is None  # absent: no consent, data as it is
    assert parse_mix(mix.to_dict()) == mix
