"""The fleet simulator: N real agents against a real control plane, for a while, with stats.

::

    settings = FleetSettings("http://127.0.0.1:8470", devices=50, api_key=key, mix=load_mix("mix.toml"))
    with FleetSimulator(settings) as sim:
        result = sim.run(duration_s=60, on_snapshot=print)   # or start() / snapshot() / stop()

What :meth:`FleetSimulator.prepare` does before any device starts (so bad input stops the run
with a clear error and nothing running):

1. asks the server's ``/healthz`` (unreachable → :class:`~tinymlops.errors.ServerUnreachableError`);
2. lays out the devices: device ``i`` gets its mix entry from :meth:`Mix.allocate
   <tinymlops.fleet.mix.Mix.allocate>`, its data directory ``<data_dir>/devices/<name>`` and a
   seed derived from the run's seed and its name. A data directory already enrolled (a re-run with
   the same ``data_dir``) keeps its device and the entry recorded for it in ``<data_dir>/fleet.json``;
   one enrolled with another server is refused;
3. for each device not enrolled yet, creates a one-time enrolment token for its profile and tags
   through the API (``POST /v1/admin/enrolment-tokens``, an ``admin``-scope key): the first token
   of each profile first, so a profile the server does not know, a refused key or a too small
   scope stop the run before more tokens are made (tokens already made expire unused);
4. writes ``fleet.json`` (atomically).

Then the backend (:mod:`tinymlops.fleet.backends`) runs the devices (:mod:`tinymlops.fleet.device`);
:meth:`FleetSimulator.snapshot` folds their stats per profile (:mod:`tinymlops.fleet.stats`);
:meth:`FleetSimulator.stop` stops them all, each finishing its current step, and returns the
:class:`FleetResult`. :meth:`FleetSimulator.run` does start → snapshot every ``refresh_s`` →
stop after ``duration_s``, on ``stop`` being set, or on Ctrl-C (``interrupted`` in the result).
Without ``data_dir`` the devices live in a temporary directory, removed at :meth:`close` unless
``keep``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tinymlops.crypto.keys import write_file_atomic
from tinymlops.devices.identity import EnrolmentState
from tinymlops.edge.agent.loop import AgentConfig
from tinymlops.errors import (
    AccessDeniedError,
    ConfigError,
    ServerRequestError,
    ServerUnreachableError,
    UsageError,
)
from tinymlops.fleet.backends import BACKENDS, FleetBackend, import_ray, open_backend
from tinymlops.fleet.device import DevicePlan
from tinymlops.fleet.mix import Mix, MixEntry, default_mix
from tinymlops.fleet.stats import summarize

FLEET_FILE = "fleet.json"
FLEET_FORMAT = "tinymlops-fleet/1"
DEVICES_DIR = "devices"
TOKENS_PATH = "/v1/admin/enrolment-tokens"
HEALTH_PATH = "/healthz"
MAX_DEVICES = 100_000
MAX_TOKEN_TTL_S = 30 * 24 * 3600


@dataclass(frozen=True)
class FleetSettings:
    """A simulation: ``devices`` agents of ``mix`` against ``server_url``.

    ``poll_interval_s`` is each agent's polling interval (jittered ±20%; back-off from
    ``min(2, poll)`` up to ``max(10 × poll, 5)`` seconds; health reports every ``min(30, 6 × poll)``
    seconds); ``ramp_s`` spreads the devices' starts
    (default ``min(10, N / 20)`` s) so a large fleet does not enrol in one burst."""

    server_url: str
    devices: int
    mix: Mix = field(default_factory=default_mix)
    api_key: str | None = None
    data_dir: Path | None = None
    keep: bool = False
    backend: str = "threads"
    seed: int = 0
    poll_interval_s: float = 5.0
    ramp_s: float | None = None
    ray_actors: int | None = None
    ray_cpus: int = 2
    token_ttl_s: int = 24 * 3600
    request_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.devices, bool) or not isinstance(self.devices, int) or not 1 <= self.devices <= MAX_DEVICES:
            raise UsageError(f"the number of devices must be an integer from 1 to {MAX_DEVICES}, got {self.devices!r}")
        parts = urlsplit(self.server_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise UsageError(f"the server URL must be http(s)://host[:port], got {self.server_url!r}")
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}; one of: {', '.join(BACKENDS)}")
        if not (math.isfinite(self.poll_interval_s) and self.poll_interval_s > 0):
            raise UsageError(f"the poll interval must be > 0 seconds, got {self.poll_interval_s!r}")
        if self.ramp_s is not None and not (math.isfinite(self.ramp_s) and self.ramp_s >= 0):
            raise UsageError(f"the ramp must be >= 0 seconds, got {self.ramp_s!r}")
        if not 1 <= self.token_ttl_s <= MAX_TOKEN_TTL_S:
            raise UsageError(f"the token TTL must be 1 s to 30 days, got {self.token_ttl_s!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise UsageError("the API key is empty")

    @property
    def agent_config(self) -> AgentConfig:
        poll = self.poll_interval_s
        return AgentConfig(
            poll_interval=poll,
            poll_jitter=0.2,
            backoff_base=min(2.0, poll),
            backoff_cap=max(10.0 * poll, 5.0),
            health_interval=min(30.0, 6.0 * poll),
        )

    @property
    def ramp(self) -> float:
        return self.ramp_s if self.ramp_s is not None else min(10.0, self.devices / 20.0)


@dataclass
class FleetSnapshot:
    elapsed_s: float
    devices: list[dict[str, Any]]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"elapsed_s": round(self.elapsed_s, 3), **self.summary, "devices": self.devices}


@dataclass
class FleetResult:
    server_url: str
    backend: str
    seed: int
    requested_s: float | None
    elapsed_s: float
    interrupted: bool
    data_dir: str
    kept: bool
    enrolled_now: int
    devices: list[dict[str, Any]]
    summary: dict[str, Any]

    def to_dict(self, *, histograms: bool = False) -> dict[str, Any]:
        devices = self.devices if histograms else [_without_hist(d) for d in self.devices]
        return {
            "server_url": self.server_url,
            "backend": self.backend,
            "seed": self.seed,
            "duration_s": self.requested_s,
            "elapsed_s": round(self.elapsed_s, 3),
            "interrupted": self.interrupted,
            "data_dir": self.data_dir,
            "kept": self.kept,
            "enrolled_now": self.enrolled_now,
            "profiles": self.summary["profiles"],
            "total": self.summary["total"],
            "devices": devices,
        }


def _without_hist(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "latency_hist"}


def device_seed(run_seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{run_seed}/{name}".encode()).digest()[:4], "big")


def device_name(index: int) -> str:
    return f"device-{index:05d}"


class FleetSimulator:
    def __init__(self, settings: FleetSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._temp = settings.data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="tinymlops-fleet-")) if settings.data_dir is None else Path(settings.data_dir)
        )
        self.plans: list[DevicePlan] | None = None
        self.enrolled_now = 0
        self.backend: FleetBackend | None = None
        self._started_at: float | None = None
        self._last: list[dict[str, Any]] = []
        self._closed = False

    # --- preparing ------------------------------------------------------------------------------
    def _http(self) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}
        return httpx.Client(base_url=self.settings.server_url, headers=headers, timeout=self.settings.request_timeout_s)

    def _check_server(self, http: Any) -> None:
        import httpx

        url = self.settings.server_url
        try:
            r = http.get(HEALTH_PATH)
        except httpx.HTTPError as exc:
            raise ServerUnreachableError(f"cannot reach the control plane at {url}: {exc}", status=0, url=url) from None
        if r.status_code != 200:
            raise ServerRequestError(
                f"the control plane at {url} is not healthy: GET {HEALTH_PATH} answered HTTP {r.status_code}",
                status=r.status_code,
            )

    def _record(self) -> dict[str, Any]:
        path = self.data_dir / FLEET_FILE
        if not path.exists():
            return {}
        try:
            doc = json.loads(path.read_bytes())
            if doc.get("format") != FLEET_FORMAT or not isinstance(doc.get("devices"), dict):
                raise ValueError("not a fleet record")
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{path}: not a readable fleet record ({exc}); use another --data-dir") from None
        devices: dict[str, Any] = doc["devices"]
        return devices

    def _layout(self) -> list[tuple[str, MixEntry, Path, EnrolmentState | None]]:
        s = self.settings
        recorded = self._record()
        out = []
        for i, planned in enumerate(s.mix.allocate(s.devices), start=1):
            name = device_name(i)
            directory = self.data_dir / DEVICES_DIR / name
            state = EnrolmentState.load(directory) if directory.exists() else None
            entry = planned
            if state is not None:
                if state.server_url.rstrip("/") != s.server_url.rstrip("/"):
                    raise UsageError(
                        f"{directory} is enrolled with {state.server_url}, not {s.server_url}: "
                        "use another --data-dir for another control plane"
                    )
                was = (recorded.get(name) or {}).get("entry")
                if was is not None and was != planned.name:
                    names = s.mix.names()
                    if was not in names:
                        raise UsageError(
                            f"{name} in {self.data_dir} was enrolled as mix entry {was!r}, which the mix "
                            f"({s.mix.source}) no longer has: use that mix or another --data-dir"
                        )
                    entry = s.mix.entry(was)
                if entry.profile != state.profile_name:
                    raise UsageError(
                        f"{name} in {self.data_dir} is enrolled with profile {state.profile_name!r} but the mix "
                        f"gives it {entry.profile!r}: use the same mix and --devices, or another --data-dir"
                    )
            out.append((name, entry, directory, state))
        return out

    def _create_token(self, http: Any, entry: MixEntry, name: str) -> str:
        import httpx

        s = self.settings
        body = {
            "ttl_s": s.token_ttl_s,
            "profile": entry.profile,
            "tags": list(entry.tags),
            "note": f"fleet simulator {name}",
        }
        try:
            r = http.post(TOKENS_PATH, json=body)
        except httpx.HTTPError as exc:
            raise ServerUnreachableError(f"cannot reach the control plane at {s.server_url}: {exc}", status=0) from None
        if r.status_code == 201:
            token: str = r.json()["token"]
            return token
        err_type, message = _error_of(r)
        if r.status_code == 401:
            raise UsageError(
                f"the control plane refused the API key ({message}): give a valid key with --api-key "
                "or TINYMLOPS_API_KEY"
            )
        if r.status_code == 403:
            raise AccessDeniedError(
                f"the API key may not create enrolment tokens ({message}): enrolling simulated devices needs "
                "an admin-scope key (tinymlops apikey create --scope admin)"
            )
        if r.status_code == 404 and "Target" in err_type:
            raise UsageError(
                f"{s.mix.source}: entry {entry.name!r}: the control plane has no device profile {entry.profile!r} "
                f"({message})"
            )
        if r.status_code in (400, 422):
            raise UsageError(f"{s.mix.source}: entry {entry.name!r}: the control plane refused its token: {message}")
        raise ServerRequestError(
            f"creating an enrolment token failed: HTTP {r.status_code}: {message}",
            status=r.status_code,
            error_type=err_type,
        )

    def prepare(self) -> list[DevicePlan]:
        """Check the server, lay out the devices, enrol-tokens for the new ones (module docstring)."""
        if self.plans is not None:
            return self.plans
        s = self.settings
        if s.backend == "ray":
            import_ray()  # say so now, before any token is made
        try:
            (self.data_dir / DEVICES_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot use {self.data_dir} as the fleet's data directory: {exc.strerror or exc}"
            ) from None
        layout = self._layout()
        new = [(name, entry) for name, entry, _, state in layout if state is None]
        tokens: dict[str, str] = {}
        with self._http() as http:
            self._check_server(http)
            if new and not s.api_key:
                raise UsageError(
                    f"{len(new)} simulated device(s) must enrol: give an admin-scope API key with --api-key "
                    "or TINYMLOPS_API_KEY (tinymlops apikey create --scope admin)"
                )
            first_of_profile: dict[str, int] = {}
            for i, (_, entry) in enumerate(new):
                first_of_profile.setdefault(entry.profile, i)
            order = sorted(range(len(new)), key=lambda i: (i not in first_of_profile.values(), i))
            for i in order:
                name, entry = new[i]
                tokens[name] = self._create_token(http, entry, name)
        self.enrolled_now = len(tokens)
        agent = s.agent_config
        ramp = s.ramp
        plans = []
        for i, (name, entry, directory, _) in enumerate(layout):
            seed = device_seed(s.seed, name)
            plans.append(
                DevicePlan(
                    index=i + 1,
                    name=name,
                    entry=entry.name,
                    profile=entry.profile,
                    data_dir=str(directory),
                    server_url=s.server_url,
                    seed=seed,
                    rate=entry.rate,
                    scenario=entry.scenario,
                    agent=agent,
                    token=tokens.get(name),
                    tags=entry.tags,
                    start_delay_s=(seed / 2**32) * ramp,
                    timeout_s=s.request_timeout_s,
                    upload=entry.upload,
                    shift=entry.shift,
                )
            )
        record = {
            "format": FLEET_FORMAT,
            "server_url": s.server_url,
            "devices": {p.name: {"entry": p.entry, "profile": p.profile} for p in plans},
        }
        old = self._record()
        record["devices"] = {**old, **record["devices"]}
        write_file_atomic(self.data_dir / FLEET_FILE, json.dumps(record, indent=1, sort_keys=True).encode())
        self.plans = plans
        return plans

    # --- running ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self.backend is not None:
            raise UsageError("this simulation has already started")
        plans = self.prepare()
        s = self.settings
        options: dict[str, Any] = {}
        if s.backend == "ray":
            options = {"actors": s.ray_actors, "num_cpus": s.ray_cpus}
        self.backend = open_backend(s.backend, **options)
        self._started_at = self.clock()
        self.backend.start(plans)

    @property
    def elapsed_s(self) -> float:
        return 0.0 if self._started_at is None else self.clock() - self._started_at

    def snapshot(self) -> FleetSnapshot:
        """The devices' stats now, and per profile (the last good one if the backend cannot answer)."""
        if self.backend is None:
            raise UsageError("the simulation has not started")
        try:
            self._last = self.backend.snapshot()
        except Exception:  # a slow or lost Ray actor: show what we had
            if not self._last:
                raise
        return FleetSnapshot(self.elapsed_s, self._last, summarize(self._last))

    def stop(self, *, requested_s: float | None = None, interrupted: bool = False) -> FleetResult:
        if self.backend is None:
            raise UsageError("the simulation has not started")
        elapsed = self.elapsed_s
        try:
            final = self.backend.stop()
        except Exception:
            final = self._last
            interrupted = True
        self._last = final
        s = self.settings
        return FleetResult(
            server_url=s.server_url,
            backend=s.backend,
            seed=s.seed,
            requested_s=requested_s,
            elapsed_s=elapsed,
            interrupted=interrupted,
            data_dir=str(self.data_dir),
            kept=not self._temp or s.keep,
            enrolled_now=self.enrolled_now,
            devices=final,
            summary=summarize(final),
        )

    def run(
        self,
        *,
        duration_s: float | None = None,
        stop: threading.Event | None = None,
        on_snapshot: Callable[[FleetSnapshot], None] | None = None,
        refresh_s: float = 0.5,
    ) -> FleetResult:
        """Start, snapshot every ``refresh_s`` until ``duration_s`` passed (None: until ``stop`` or
        Ctrl-C), stop, and return the result."""
        if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
            raise UsageError(f"the duration must be > 0 seconds, got {duration_s!r}")
        stop = stop or threading.Event()
        self.start()
        interrupted = False
        try:
            while not stop.is_set():
                left = math.inf if duration_s is None else duration_s - self.elapsed_s
                if left <= 0:
                    break
                stop.wait(min(refresh_s, left))
                if on_snapshot is not None:
                    on_snapshot(self.snapshot())
        except KeyboardInterrupt:
            interrupted = True
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop(requested_s=duration_s, interrupted=True)
            raise
        interrupted = interrupted or (duration_s is not None and self.elapsed_s < duration_s)
        return self.stop(requested_s=duration_s, interrupted=interrupted)

    def close(self) -> None:
        """Stop anything still running; remove a temporary data directory unless ``keep``."""
        if self._closed:
            return
        self._closed = True
        if self.backend is not None:
            self.backend.close()
        if self._temp and not self.settings.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> FleetSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error_of(response: Any) -> tuple[str, str]:
    try:
        err = response.json()["error"]
        return str(err.get("type", "")), str(err.get("message", ""))[:300]
    except Exception:
        return "", response.text[:300]


__all__ = [
    "FLEET_FILE",
    "FleetResult",
    "FleetSettings",
    "FleetSimulator",
    "FleetSnapshot",
    "device_name",
    "device_seed",
]
