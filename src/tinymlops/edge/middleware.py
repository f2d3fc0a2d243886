"""Runtime middleware: an ordered chain of ``mw(request, call_next) -> response`` functions, as in
Flower's mods or ASGI. Each can time, refuse, short-circuit or rewrite a prediction.

The bundle's manifest says which run (its ``policies`` table; a policy runs when its table has
``enabled = true``). Each policy name maps to a
factory registered here with a fixed *position*, so the chain order is the one DESIGN.md gives
(meter → guard → model → telemetry → prover) whatever order the manifest lists them in. A
manifest naming a policy this runtime does not know is refused: silently skipping, say, a
metering policy would let an old runtime give away what a newer release charges for.

A factory gets the policy's table and a :class:`PolicyContext`: which bundle the chain belongs to
(its id and the model ref the verified manifest carries), the device's energy meter, and the
clocks. The ``telemetry`` policy builds a :class:`~tinymlops.observe.recorder.TelemetryRecorder`
(:class:`~tinymlops.observe.policy.TelemetryPolicy` read from the table) bound to that bundle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tinymlops.errors import SpecError, UsageError

if TYPE_CHECKING:
    from tinymlops.observe.energy import EnergyMeter

#: chain positions of the manifest's policies (the ones later issues add included)
POSITIONS = {"metering": 10, "guard": 20, "telemetry": 40, "proof": 50}


@dataclass
class Request:
    """One prediction on its way through the chain."""

    inputs: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Response:
    outputs: dict[str, Any]
    models_called: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


CallNext = Callable[[Request], Response]
Middleware = Callable[[Request, CallNext], Response]


@dataclass(frozen=True)
class PolicyContext:
    """What a policy's middleware may need beyond its table: the bundle it serves (``bundle_id``,
    ``model`` = the model ref the manifest carries), the device's ``meter`` (None: no energy is
    recorded), ``clock`` (wall clock, stamps windows) and ``timer`` (monotonic, times calls)."""

    bundle_id: str
    model: str | None = None
    meter: EnergyMeter | None = None
    clock: Callable[[], float] = time.time
    timer: Callable[[], float] = time.perf_counter

    @classmethod
    def from_manifest(cls, manifest: Any, **kwargs: Any) -> PolicyContext:
        """The context of a verified manifest (its ``bundle_id`` and ``model.ref``)."""
        model = getattr(getattr(manifest, "model", None), "ref", None)
        return cls(manifest.bundle_id, model=model if isinstance(model, str) else None, **kwargs)


#: a factory gets the policy's table from the manifest and the context, and returns the middleware
MiddlewareFactory = Callable[[Mapping[str, Any], PolicyContext | None], Middleware]

_FACTORIES: dict[str, MiddlewareFactory] = {}


def register_middleware(name: str, factory: MiddlewareFactory) -> None:
    if name not in POSITIONS:
        raise ValueError(f"middleware '{name}' needs a position in POSITIONS")
    _FACTORIES[name] = factory


def build_chain(
    policies: Mapping[str, Any],
    extra: list[Middleware] | None = None,
    *,
    context: PolicyContext | None = None,
) -> list[Middleware]:
    """The middleware the manifest's policies enable, in canonical order (then ``extra``).
    ``context`` is the bundle's (:class:`PolicyContext`); a policy that needs it refuses without."""
    enabled = []
    for name, table in policies.items():
        if not isinstance(table, Mapping) or table.get("enabled") is not True:
            continue
        if name not in _FACTORIES:
            raise SpecError(
                f"the bundle requires policy '{name}', which this runtime does not implement "
                f"(known: {', '.join(sorted(_FACTORIES)) or 'none'}); update the runtime",
                policy=name,
            )
        enabled.append((POSITIONS[name], name, table))
    chain = [_FACTORIES[name](table, context) for _, name, table in sorted(enabled)]
    return chain + list(extra or [])


def compose(chain: list[Middleware], endpoint: CallNext) -> CallNext:
    """Fold the chain around the endpoint once, so a call walks no list at run time."""
    handler = endpoint
    for mw in reversed(chain):
        handler = _bind(mw, handler)
    return handler


def _bind(mw: Middleware, nxt: CallNext) -> CallNext:
    def call(request: Request) -> Response:
        return mw(request, nxt)

    return call


def _telemetry_factory(table: Mapping[str, Any], context: PolicyContext | None) -> Middleware:
    """The telemetry policy (parsed by :meth:`TelemetryPolicy.from_table
    <tinymlops.observe.policy.TelemetryPolicy.from_table>`): a TelemetryRecorder for the bundle, with
    the context's meter and clocks."""
    from tinymlops.observe.policy import TelemetryPolicy
    from tinymlops.observe.recorder import TelemetryRecorder

    policy = TelemetryPolicy.from_table(table)
    if context is None:
        raise UsageError("the telemetry policy needs the bundle's PolicyContext (its bundle id and model)")
    return TelemetryRecorder(
        context.bundle_id,
        model=context.model,
        policy=policy,
        meter=context.meter,
        clock=context.clock,
        timer=context.timer,
    )


register_middleware("telemetry", _telemetry_factory)


def _metering_factory(table: Mapping[str, Any], context: PolicyContext | None) -> Middleware:
    from tinymlops.metering.meter import metering_factory  # imported on use: bundles without metering never load it

    return metering_factory(table, context)


register_middleware("metering", _metering_factory)

__all__ = [
    "POSITIONS",
    "CallNext",
    "Middleware",
    "MiddlewareFactory",
    "PolicyContext",
    "Request",
    "Response",
    "build_chain",
    "compose",
    "register_middleware",
]
