"""The telemetry policy a release puts into every bundle it builds (the manifest's ``[policies.telemetry]``).

A device records telemetry only when its bundle's manifest enables it
(:mod:`tinymlops.edge.middleware`), so the release decides. :func:`telemetry_table` writes:

* ``enabled = true`` by default, with the settings the server computes reference profiles with
  (:class:`~tinymlops.observe.policy.TelemetryPolicy`'s defaults: ``sketch_k``, ``max_features``,
  ``projection_dims``, ``projection_seed`` — :mod:`tinymlops.observe.references`): the same
  settings give the same features on both sides, so live windows compare with the reference;
* ``classes`` and ``output`` when the model has a class-score output — the first float output
  shaped ``[batch, C > 1]``, the one evaluation and the reference read
  (:func:`~tinymlops.optimize.evaluation.score_output_index`): the device then reads that output
  (not, say, a label output before it) and its class histogram has ``C`` bins from the first window.
  A model without one (a regression, scikit-learn's label + ZipMap) leaves both out, and the device
  finds what it can (:class:`~tinymlops.observe.recorder.TelemetryRecorder`).

The caller's options (:data:`OPTION_KEYS`; None = all defaults):

* ``enabled = false``: the table is ``{"enabled": false}`` — devices record nothing;
* ``inputs = false``: performance only (requests, errors, latency, memory, energy) — no sketches,
  moments or histograms;
* ``privacy``: ``classes_epsilon``, ``confidence_epsilon`` (local differential privacy on the class
  and confidence histograms; absent: exact), ``window_epsilon``, ``day_epsilon`` (the device's caps).

Every table is parsed with :meth:`TelemetryPolicy.from_table` — the parser the device runs — before
anything is built: a bad value is a :class:`~tinymlops.errors.SpecError` naming the key.

Server side (release); imports nothing heavy itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tinymlops.errors import SpecError, UsageError
from tinymlops.observe.policy import TelemetryPolicy
from tinymlops.observe.privacy import PrivacyPolicy
from tinymlops.spec.model_info import TensorSpec
from tinymlops.spec.telemetry import MAX_CLASSES

DOC = "telemetry"
#: what a release may set (everything else is the reference profile's settings, or read from the model)
OPTION_KEYS = ("enabled", "inputs", "privacy")
PRIVACY_KEYS = ("classes_epsilon", "confidence_epsilon", "window_epsilon", "day_epsilon")


def telemetry_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The caller's options checked and normalised: ``{"enabled", "inputs", "privacy"}`` (privacy
    without the keys left unset). SpecError names the first bad key."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise SpecError(f"{DOC}: must be an object with {', '.join(OPTION_KEYS)}, got {type(options).__name__}")
    unknown = sorted(str(k) for k in options if k not in OPTION_KEYS)
    if unknown:
        raise SpecError(
            f"{DOC}: unknown option(s) {', '.join(unknown)} (a release sets {', '.join(OPTION_KEYS)}; the sketch "
            "settings are the reference profile's)",
            key=unknown[0],
        )
    out: dict[str, Any] = {}
    for key in ("enabled", "inputs"):
        value = options.get(key, True)
        if not isinstance(value, bool):
            raise SpecError(f"{DOC}: '{key}' must be true or false, got {value!r:.80}", key=key)
        out[key] = value
    privacy = options.get("privacy")
    if privacy is None:
        privacy = {}
    if not isinstance(privacy, Mapping):
        raise SpecError(f"{DOC}: 'privacy' must be an object with {', '.join(PRIVACY_KEYS)}", key="privacy")
    unknown = sorted(str(k) for k in privacy if k not in PRIVACY_KEYS)
    if unknown:
        raise SpecError(
            f"{DOC}: unknown privacy setting(s) {', '.join(unknown)} (known: {', '.join(PRIVACY_KEYS)})",
            key=f"privacy.{unknown[0]}",
        )
    settings: dict[str, float] = {}
    for key in PRIVACY_KEYS:
        value = privacy.get(key)
        if value is None:
            continue
        try:
            PrivacyPolicy(**{key: value})  # each key alone, so the error names it
        except UsageError as exc:
            raise SpecError(f"{DOC}: privacy.{key}: {exc.message}", key=f"privacy.{key}") from exc
        settings[key] = float(value)
    out["privacy"] = settings
    return out


def score_output(outputs: Sequence[TensorSpec]) -> TensorSpec | None:
    """The model's class-score output (first float ``[batch, C > 1]``), or None when it has none."""
    from tinymlops.optimize.evaluation import score_output_index

    if not outputs:
        return None
    spec = outputs[score_output_index(outputs)]
    last = spec.shape[-1] if spec.shape else None
    if spec.dtype.startswith("float") and len(spec.shape) == 2 and isinstance(last, int) and 1 < last <= MAX_CLASSES:
        return spec
    return None


def telemetry_table(options: Mapping[str, Any] | None, outputs: Sequence[TensorSpec] = ()) -> dict[str, Any]:
    """The ``[policies.telemetry]`` table for a bundle of a model with these ``outputs`` (see the module doc)."""
    opts = telemetry_options(options)
    if not opts["enabled"]:
        return {"enabled": False}
    table: dict[str, Any] = {"enabled": True, "inputs": opts["inputs"]}
    if opts["inputs"]:
        defaults = TelemetryPolicy()
        table.update(
            max_features=defaults.max_features,
            projection_dims=defaults.projection_dims,
            projection_seed=defaults.projection_seed,
            sketch_k=defaults.sketch_k,
        )
        scores = score_output(outputs)
        if scores is not None:
            last = scores.shape[-1]
            assert isinstance(last, int)
            table.update(output=scores.name, classes=last)
    if opts["privacy"]:
        table["privacy"] = dict(opts["privacy"])
    TelemetryPolicy.from_table(table)  # what the device will parse: a value it would refuse is refused here
    return table


def common_table(tables: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """What every one of ``tables`` says alike (all of it when they agree; a release whose variants
    differ in their outputs keeps ``classes``/``output`` on each assignment); None for no table."""
    tables = list(tables)
    if not tables:
        return None
    first = tables[0]
    return {k: v for k, v in first.items() if all(k in t and t[k] == v for t in tables[1:])}


__all__ = ["OPTION_KEYS", "PRIVACY_KEYS", "common_table", "score_output", "telemetry_options", "telemetry_table"]
