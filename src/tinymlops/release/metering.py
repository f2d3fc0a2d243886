"""The metering policy a release may put into every bundle it builds (the manifest's ``[policies.metering]``).

A release is metered when its caller asks for it (``metering={"block": 64}``, or ``{}`` for the
default block): every bundle then carries::

    [policies.metering]
    enabled = true
    model = "digits"   # the release's model name: the name a license for these devices must carry
    block = 64         # calls per durable reservation on the device

and a device opens it only with its usage ledger bound and serves only what a license it holds
allows (:mod:`tinymlops.metering.meter`). Licenses are sold per (device, model) with
``tinymlops license issue``; a release does not issue them. The options are checked here, before
anything is built, with the bounds the device applies: a bad value is a
:class:`~tinymlops.errors.SpecError` naming it.

Server side (release); imports only the device's constants.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tinymlops.errors import SpecError
from tinymlops.metering.meter import DEFAULT_BLOCK, MAX_BLOCK
from tinymlops.spec.license import MODEL_NAME

#: what a caller may set (the model is the release's own)
OPTION_KEYS = frozenset({"block"})


def metering_table(options: Mapping[str, Any] | None, model: str) -> dict[str, Any] | None:
    """The ``metering`` policy table for the bundles of a release of ``model`` (None: not metered)."""
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise SpecError(f"metering options must be a table, got {type(options).__name__}")
    unknown = sorted(set(options) - OPTION_KEYS)
    if unknown:
        raise SpecError(
            f"metering options: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(OPTION_KEYS))})"
        )
    block = options.get("block", DEFAULT_BLOCK)
    if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= MAX_BLOCK:
        raise SpecError(f"metering option 'block' must be an integer in [1, {MAX_BLOCK}], got {block!r:.40}")
    if not MODEL_NAME.match(model):
        raise SpecError(f"model name {model!r:.80} cannot be metered: a license names models by [A-Za-z0-9._-]")
    return {"enabled": True, "model": model, "block": block}


__all__ = ["OPTION_KEYS", "metering_table"]
