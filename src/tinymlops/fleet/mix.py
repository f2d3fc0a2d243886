"""The profile mix: which devices a simulated fleet has and what their moments look like.

A mix file is TOML (read with :mod:`tomllib`); each table under ``profiles`` is one *entry*: a
device profile the control plane knows, how many devices get it, and the context scenario those
devices live through::

    spec_version = "1.0"                 # optional; a newer major version is refused

    [profiles.android-nnapi-phone]       # the entry's name is the profile unless `profile` is given
    weight = 3                           # a share of the devices ... (default 1)
    # count = 5                          # ... or an exact number (not both)
    tags = ["eu", "phones"]              # the devices' tags (given to their enrolment tokens)
    rate = 2.0                           # predictions per second while the device is on
    prefer = "balanced"                  # the device's preference (energy when its battery is low)

    [profiles.android-nnapi-phone.network]
    wifi = 0.5                           # weights of the network states (missing = 0; none = all wifi)
    cellular = 0.35
    offline = 0.15
    mean_period_s = 12.0                 # mean length of a network period (exponential)
    min_period_s = 1.0
    wifi_kbps = 20000                    # bandwidth each state reports
    cellular_kbps = 2000

    [profiles.android-nnapi-phone.battery]   # absent: mains powered
    initial = [0.3, 1.0]                 # state of charge at start: a number or a [low, high] range
    drain_per_s = 0.002                  # fractions of a full charge
    drain_per_prediction = 0.0002
    charge_per_s = 0.02
    charge_every_s = 90                  # charging schedule: charge_for_s of every charge_every_s
    charge_for_s = 30

    [profiles.android-nnapi-phone.telemetry]  # the owners' upload choices (absent: no consent —
    consent = true                            # windows wait on the device, merged when they pile up)
    wifi_only = true
    only_charging = false
    max_bytes_per_day = 200000

    [profiles.android-nnapi-phone.inputs]     # absent: the data as it is
    shift_features = [19, 20, 44]             # indices into the flattened input ...
    shift_sd = 0.5                            # ... that read this many standard deviations higher

The parser is strict: an unknown field, a wrong type or an out-of-range value is a
:class:`~tinymlops.errors.ConfigError` naming the file, the line and the field. Whether each
profile exists is for the control plane to say (the simulator asks it before starting anything).

:func:`default_mix` spreads a fleet over the built-in catalog profiles (``tinymlops/targets``).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinymlops.devices.enrolment import MAX_TAGS, TAG
from tinymlops.errors import ConfigError, UsageError
from tinymlops.fleet.context import BatteryScenario, NetworkScenario, Scenario
from tinymlops.fleet.workload import MAX_SHIFT_FEATURES, InputShift
from tinymlops.observe.upload_policy import UploadPolicy
from tinymlops.spec.context import NETWORKS, PREFERENCES

MIX_SPEC_MAJOR = 1
#: entry and profile names (as the control plane accepts profile names)
PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_RATE = 1000.0
MAX_ENTRIES = 1000

_TOP = {"spec_version", "profiles"}
_ENTRY = {"profile", "weight", "count", "tags", "rate", "prefer", "network", "battery", "telemetry", "inputs"}
_TELEMETRY = {"consent", "wifi_only", "only_charging", "max_bytes_per_day"}
_INPUTS = {"shift_features", "shift_sd"}
_NETWORK = {*NETWORKS, "mean_period_s", "min_period_s", "wifi_kbps", "cellular_kbps"}
_BATTERY = {"initial", "drain_per_s", "drain_per_prediction", "charge_per_s", "charge_every_s", "charge_for_s"}


@dataclass(frozen=True)
class MixEntry:
    """One kind of device in the fleet: ``count`` devices, or a ``weight`` share of the rest."""

    name: str
    profile: str
    weight: float | None = 1.0
    count: int | None = None
    tags: tuple[str, ...] = ()
    rate: float = 1.0
    scenario: Scenario = field(default_factory=Scenario)
    upload: UploadPolicy | None = None
    shift: InputShift | None = None

    def to_dict(self) -> dict[str, Any]:
        net = self.scenario.network
        bw = dict(net.bandwidth_kbps)
        out: dict[str, Any] = {"profile": self.profile, "tags": list(self.tags), "rate": self.rate}
        if self.count is not None:
            out["count"] = self.count
        else:
            out["weight"] = self.weight
        out["prefer"] = self.scenario.prefer
        out["network"] = {
            **dict(net.weights),
            "mean_period_s": net.mean_period_s,
            "min_period_s": net.min_period_s,
            "wifi_kbps": bw.get("wifi"),
            "cellular_kbps": bw.get("cellular"),
        }
        b = self.scenario.battery
        if b is not None:
            out["battery"] = {
                "initial": list(b.initial),
                "drain_per_s": b.drain_per_s,
                "drain_per_prediction": b.drain_per_prediction,
                "charge_per_s": b.charge_per_s,
                "charge_for_s": b.charge_for_s,
            }
            if b.charge_every_s is not None:
                out["battery"]["charge_every_s"] = b.charge_every_s
        if self.upload is not None:
            u = self.upload
            out["telemetry"] = {"consent": u.consent, "wifi_only": u.wifi_only, "only_charging": u.only_charging}
            if u.max_bytes_per_day is not None:
                out["telemetry"]["max_bytes_per_day"] = u.max_bytes_per_day
        if self.shift is not None:
            out["inputs"] = self.shift.to_dict()
        return out


@dataclass(frozen=True)
class Mix:
    entries: tuple[MixEntry, ...]
    source: str = "mix"

    def __post_init__(self) -> None:
        if not self.entries:
            raise ConfigError(f"{self.source}: the mix has no [profiles.NAME] entries")

    def entry(self, name: str) -> MixEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise UsageError(f"{self.source}: no entry named {name!r} (entries: {', '.join(self.names())})")

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def profiles(self) -> list[str]:
        """The distinct device profiles, in the order the mix names them."""
        return list(dict.fromkeys(e.profile for e in self.entries))

    def counts(self, devices: int) -> dict[str, int]:
        """How many of ``devices`` each entry gets: exact counts first, then the rest by weight
        (largest remainder; ties go to the entry named first)."""
        if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
            raise UsageError(f"the number of devices must be an integer >= 1, got {devices!r}")
        fixed = {e.name: e.count for e in self.entries if e.count is not None}
        taken = sum(fixed.values())
        if taken > devices:
            raise UsageError(
                f"{self.source}: the entries' counts add up to {taken} devices, more than the {devices} asked for"
            )
        weighted = [e for e in self.entries if e.count is None]
        rest = devices - taken
        if rest and not weighted:
            raise UsageError(
                f"{self.source}: the entries' counts add up to {taken} devices but {devices} were asked for, "
                "and no entry has a weight to take the other devices"
            )
        out = {e.name: fixed.get(e.name, 0) for e in self.entries}
        if rest:
            total = sum(e.weight or 0.0 for e in weighted)
            quotas = [(rest * (e.weight or 0.0) / total, i, e) for i, e in enumerate(weighted)]
            for q, _, e in quotas:
                out[e.name] = math.floor(q)
            left = rest - sum(math.floor(q) for q, _, _ in quotas)
            for _q, _, e in sorted(quotas, key=lambda t: (-(t[0] - math.floor(t[0])), t[1]))[:left]:
                out[e.name] += 1
        return out

    def allocate(self, devices: int) -> list[MixEntry]:
        """Device ``i`` → its entry, the entries spread evenly over the indices (deterministic)."""
        counts = self.counts(devices)
        slots = []
        for order, e in enumerate(self.entries):
            k = counts[e.name]
            slots += [((j + 0.5) / k, order, e) for j in range(k)]
        return [e for _, _, e in sorted(slots, key=lambda s: (s[0], s[1]))]

    def to_dict(self) -> dict[str, Any]:
        return {"spec_version": "1.0", "profiles": {e.name: e.to_dict() for e in self.entries}}


# --- where in the file ---------------------------------------------------------------------------
_HEADER = re.compile(r"^\s*\[\s*([^\[\]#]+?)\s*\]\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")


def _split_key(text: str) -> tuple[str, ...]:
    parts = re.findall(r"[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'", text)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


class _Lines:
    """Line numbers of tables and keys in a TOML text (for error messages; best effort)."""

    def __init__(self, text: str) -> None:
        self.tables: dict[tuple[str, ...], int] = {}
        self.keys: dict[tuple[str, ...], int] = {}
        current: tuple[str, ...] = ()
        for n, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                current = _split_key(header.group(1))
                self.tables.setdefault(current, n)
                continue
            key = _KEY.match(line)
            if key:
                path = current + _split_key(key.group(1))
                self.keys.setdefault(path, n)
                for i in range(len(current) + 1, len(path)):  # dotted keys make tables too
                    self.tables.setdefault(path[:i], n)

    def line(self, path: tuple[str, ...]) -> int | None:
        while path:
            if path in self.keys:
                return self.keys[path]
            if path in self.tables:
                return self.tables[path]
            path = path[:-1]
        return None


class _Reader:
    def __init__(self, source: str, lines: _Lines | None) -> None:
        self.source = source
        self.lines = lines

    def fail(self, path: tuple[str, ...], message: str) -> ConfigError:
        line = self.lines.line(path) if self.lines is not None else None
        where = f"{self.source}:{line}" if line is not None else self.source
        field = ".".join(path) if path else "(top level)"
        return ConfigError(f"{where}: {field}: {message}", file=self.source, line=line, field=field)

    def table(self, data: Any, path: tuple[str, ...], allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(data, Mapping):
            raise self.fail(path, f"must be a table, got {_kind(data)}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise self.fail((*path, unknown[0]), f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
        return data

    def number(
        self,
        data: Mapping[str, Any],
        path: tuple[str, ...],
        key: str,
        default: float | None,
        *,
        minimum: float = 0.0,
        maximum: float = math.inf,
        above: bool = False,
    ) -> float | None:
        if key not in data:
            return default
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail((*path, key), f"must be a finite number, got {_show(value)}")
        low_ok = value > minimum if above else value >= minimum
        if not low_ok or value > maximum:
            lo = f"> {minimum}" if above else f">= {minimum}"
            rng = lo if maximum == math.inf else f"{lo} and <= {maximum}"
            raise self.fail((*path, key), f"must be {rng}, got {value}")
        return float(value)


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- the parser ------------------------------------------------------------------------------------
def parse_mix(data: str | Mapping[str, Any], source: str = "mix") -> Mix:
    """Parse a mix from TOML text (or an already-parsed table); errors name the line and field."""
    lines: _Lines | None = None
    if isinstance(data, str):
        try:
            doc: Any = tomllib.loads(data)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}", file=source) from None
        lines = _Lines(data)
    else:
        doc = data
    r = _Reader(source, lines)
    top = r.table(doc, (), _TOP)
    if "spec_version" in top:
        version = top["spec_version"]
        if not isinstance(version, str) or not re.fullmatch(r"[0-9]+(\.[0-9]+)?", version):
            raise r.fail(("spec_version",), f"must look like '1.0', got {_show(version)}")
        if int(version.split(".")[0]) != MIX_SPEC_MAJOR:
            raise r.fail(("spec_version",), f"unsupported version {version} (this build reads {MIX_SPEC_MAJOR}.x)")
    if "profiles" not in top:
        raise r.fail(("profiles",), "missing: give at least one [profiles.NAME] table")
    profiles = top["profiles"]
    if not isinstance(profiles, Mapping):
        raise r.fail(("profiles",), f"must be a table of entries, got {_kind(profiles)}")
    if not profiles:
        raise r.fail(("profiles",), "is empty: give at least one [profiles.NAME] table")
    if len(profiles) > MAX_ENTRIES:
        raise r.fail(("profiles",), f"has {len(profiles)} entries; at most {MAX_ENTRIES}")
    return Mix(tuple(_entry(r, str(name), body) for name, body in profiles.items()), source)


def _entry(r: _Reader, name: str, body: Any) -> MixEntry:
    path = ("profiles", name)
    if not PROFILE_NAME.fullmatch(name):
        raise r.fail(path, "an entry name is 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit")
    t = r.table(body, path, _ENTRY)
    profile = t.get("profile", name)
    if not isinstance(profile, str) or not PROFILE_NAME.fullmatch(profile):
        raise r.fail((*path, "profile"), f"must be a device profile name, got {_show(profile)}")
    if "weight" in t and "count" in t:
        raise r.fail((*path, "count"), "give either weight or count, not both")
    count: int | None = None
    weight: float | None = None
    if "count" in t:
        c = t["count"]
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise r.fail((*path, "count"), f"must be an integer >= 0, got {_show(c)}")
        count = c
    else:
        weight = r.number(t, path, "weight", 1.0, minimum=0.0, above=True)
    tags = t.get("tags", [])
    if not isinstance(tags, list):
        raise r.fail((*path, "tags"), f"must be an array of strings, got {_kind(tags)}")
    if len(tags) > MAX_TAGS:
        raise r.fail((*path, "tags"), f"at most {MAX_TAGS} tags, got {len(tags)}")
    for tag in tags:
        if not isinstance(tag, str) or not TAG.fullmatch(tag):
            raise r.fail(
                (*path, "tags"),
                f"bad tag {_show(tag)}: 1-64 of a-z 0-9 . _ : = - (starting with a letter or digit)",
            )
    if len(set(tags)) != len(tags):
        raise r.fail((*path, "tags"), "a tag is given twice")
    rate = r.number(t, path, "rate", 1.0, maximum=MAX_RATE)
    prefer = t.get("prefer", "balanced")
    if prefer not in PREFERENCES:
        raise r.fail((*path, "prefer"), f"must be one of {', '.join(PREFERENCES)}, got {_show(prefer)}")
    network = _network(r, t.get("network", {}), (*path, "network"))
    battery = None if "battery" not in t else _battery(r, t["battery"], (*path, "battery"))
    upload = None if "telemetry" not in t else _upload(r, t["telemetry"], (*path, "telemetry"))
    shift = None if "inputs" not in t else _shift(r, t["inputs"], (*path, "inputs"))
    assert rate is not None
    return MixEntry(
        name=name,
        profile=profile,
        weight=weight,
        count=count,
        tags=tuple(tags),
        rate=rate,
        scenario=Scenario(network=network, battery=battery, prefer=prefer),
        upload=upload,
        shift=shift,
    )


def _upload(r: _Reader, body: Any, path: tuple[str, ...]) -> UploadPolicy:
    t = r.table(body, path, _TELEMETRY)
    flags = {}
    for key, default in (("consent", True), ("wifi_only", True), ("only_charging", False)):
        value = t.get(key, default)
        if not isinstance(value, bool):
            raise r.fail((*path, key), f"must be true or false, got {_show(value)}")
        flags[key] = value
    cap = t.get("max_bytes_per_day")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise r.fail((*path, "max_bytes_per_day"), f"must be an integer >= 1, got {_show(cap)}")
    return UploadPolicy(max_bytes_per_day=cap, **flags)


def _shift(r: _Reader, body: Any, path: tuple[str, ...]) -> InputShift:
    t = r.table(body, path, _INPUTS)
    if "shift_features" not in t:
        raise r.fail((*path, "shift_features"), "missing: the indices (into the flattened input) to shift")
    features = t["shift_features"]
    if (
        not isinstance(features, list)
        or not 0 < len(features) <= MAX_SHIFT_FEATURES
        or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in features)
    ):
        raise r.fail(
            (*path, "shift_features"),
            f"must be an array of 1 to {MAX_SHIFT_FEATURES} integers >= 0, got {_show(features)}",
        )
    if len(set(features)) != len(features):
        raise r.fail((*path, "shift_features"), "a feature is given twice")
    sd = r.number(t, path, "shift_sd", 0.5, minimum=-1e6, maximum=1e6)
    assert sd is not None
    return InputShift(tuple(features), sd)


def _network(r: _Reader, body: Any, path: tuple[str, ...]) -> NetworkScenario:
    t = r.table(body, path, _NETWORK)
    weights = tuple((s, r.number(t, path, s, 0.0) or 0.0) for s in NETWORKS if s in t)
    if not weights:
        weights = (("wifi", 1.0),)
    elif not sum(w for _, w in weights) > 0:
        raise r.fail((*path, weights[0][0]), "the network weights must not all be 0")
    mean = r.number(t, path, "mean_period_s", 30.0, minimum=0.0, above=True, maximum=1e9)
    assert mean is not None
    low = r.number(t, path, "min_period_s", min(1.0, mean), minimum=0.0, above=True, maximum=1e9)
    assert low is not None
    if low > mean:
        raise r.fail((*path, "min_period_s"), f"must not exceed mean_period_s ({mean}), got {low}")
    wifi = r.number(t, path, "wifi_kbps", 20_000.0, minimum=0.0, above=True, maximum=1e9)
    cell = r.number(t, path, "cellular_kbps", 2_000.0, minimum=0.0, above=True, maximum=1e9)
    assert wifi is not None and cell is not None
    return NetworkScenario(
        weights=weights,
        mean_period_s=mean,
        min_period_s=low,
        bandwidth_kbps=(("wifi", wifi), ("cellular", cell)),
    )


def _battery(r: _Reader, body: Any, path: tuple[str, ...]) -> BatteryScenario:
    t = r.table(body, path, _BATTERY)
    initial: tuple[float, float] = (1.0, 1.0)
    if "initial" in t:
        v = t["initial"]
        if isinstance(v, list):
            if len(v) != 2:
                raise r.fail((*path, "initial"), f"a range is [low, high], got {len(v)} values")
            lo = r.number({"initial": v[0]}, path, "initial", None, maximum=1.0)
            hi = r.number({"initial": v[1]}, path, "initial", None, maximum=1.0)
            assert lo is not None and hi is not None
            if lo > hi:
                raise r.fail((*path, "initial"), f"range [{lo}, {hi}] is upside down")
            initial = (lo, hi)
        else:
            x = r.number(t, path, "initial", None, maximum=1.0)
            assert x is not None
            initial = (x, x)
    every = r.number(t, path, "charge_every_s", None, minimum=0.0, above=True, maximum=1e9)
    length = r.number(t, path, "charge_for_s", 0.0 if every is None else every / 3, maximum=1e9)
    assert length is not None
    if every is None and "charge_for_s" in t and length > 0:
        raise r.fail((*path, "charge_for_s"), "needs charge_every_s (the schedule's period)")
    if every is not None and length > every:
        raise r.fail((*path, "charge_for_s"), f"must not exceed charge_every_s ({every}), got {length}")
    drain = r.number(t, path, "drain_per_s", 0.001, maximum=1.0)
    per_pred = r.number(t, path, "drain_per_prediction", 0.0, maximum=1.0)
    charge = r.number(t, path, "charge_per_s", 0.01, maximum=1.0)
    assert drain is not None and per_pred is not None and charge is not None
    return BatteryScenario(
        initial=initial,
        drain_per_s=drain,
        drain_per_prediction=per_pred,
        charge_per_s=charge,
        charge_every_s=every,
        charge_for_s=length,
    )


def load_mix(path: str | Path) -> Mix:
    """Read and parse a mix file; errors name the file (and the line and field)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{path}: cannot read the mix file: {reason}", file=str(path)) from None
    return parse_mix(text, str(path))


#: the default mix over the built-in catalog profiles (``tinymlops fleet mix`` prints it)
DEFAULT_MIX_TOML = """\
# The default fleet mix: the built-in device profiles with typical moments.
spec_version = "1.0"

[profiles.x86-edge-server]          # a gateway in a cabinet: always on, always connected
weight = 1
rate = 8.0

[profiles.jetson-orin-nano]         # a camera box on a site network
weight = 1
rate = 6.0
[profiles.jetson-orin-nano.network]
wifi = 0.95
offline = 0.05
mean_period_s = 20.0

[profiles.rpi-4]                    # a shop-floor board on Wi-Fi that drops out now and then
weight = 3
rate = 4.0
[profiles.rpi-4.network]
wifi = 0.85
offline = 0.15
mean_period_s = 10.0

[profiles.rpi-zero-2w]              # a solar sensor node: charges by day, often out of range
weight = 2
rate = 2.0
[profiles.rpi-zero-2w.network]
wifi = 0.6
offline = 0.4
mean_period_s = 8.0
[profiles.rpi-zero-2w.battery]
initial = [0.2, 0.9]
drain_per_s = 0.004
drain_per_prediction = 0.0005
charge_per_s = 0.03
charge_every_s = 60.0
charge_for_s = 20.0

[profiles.android-nnapi-phone]      # phones: Wi-Fi at home, cellular on the move, tunnels
weight = 3
rate = 2.0
[profiles.android-nnapi-phone.network]
wifi = 0.5
cellular = 0.35
offline = 0.15
mean_period_s = 12.0
[profiles.android-nnapi-phone.battery]
initial = [0.3, 1.0]
drain_per_s = 0.002
drain_per_prediction = 0.0002
charge_per_s = 0.02
charge_every_s = 90.0
charge_for_s = 30.0

[profiles.ios-coreml-phone]
weight = 2
rate = 2.0
[profiles.ios-coreml-phone.network]
wifi = 0.45
cellular = 0.45
offline = 0.1
mean_period_s = 12.0
[profiles.ios-coreml-phone.battery]
initial = [0.3, 1.0]
drain_per_s = 0.002
drain_per_prediction = 0.0002
charge_per_s = 0.02
charge_every_s = 90.0
charge_for_s = 30.0

[profiles.mcu-cortex-m7]            # LiteRT only: an ONNX model has no variant for it
weight = 1
rate = 1.0
[profiles.mcu-cortex-m7.network]
wifi = 0.3
offline = 0.7
mean_period_s = 6.0
[profiles.mcu-cortex-m7.battery]
initial = [0.5, 1.0]
drain_per_s = 0.001
charge_per_s = 0.0
"""


def default_mix() -> Mix:
    return parse_mix(DEFAULT_MIX_TOML, "default mix")


__all__ = [
    "DEFAULT_MIX_TOML",
    "MIX_SPEC_MAJOR",
    "Mix",
    "MixEntry",
    "default_mix",
    "load_mix",
    "parse_mix",
]
