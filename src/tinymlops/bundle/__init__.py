"""Bundles: one signed, encrypted file carrying everything a device needs for one model release.

Device side (edge-safe, imported eagerly):

* :func:`open_bundle` - verify, check, unwrap and decrypt in memory -> :class:`OpenedBundle`;
* :func:`verify_bundle` - every check that needs no device key -> :class:`VerifiedBundle`;
* :func:`inspect_bundle` - the manifest without secrets (not verified);
* :func:`run_check` - the build-time smoke-test vector on a loaded backend;
* :mod:`tinymlops.bundle.container` - the strict single-file container format.

Control-plane side (imports the registry; loaded lazily on first access, or import
:mod:`tinymlops.bundle.builder` / :mod:`tinymlops.bundle.workspace_keys` explicitly):

* :func:`build_bundle` -> :class:`BuildResult`;
* :func:`release_key`, :func:`release_public_key`, :func:`fleet_key` - the workspace's keys.

Importing this package never imports sqlalchemy or onnx.
"""

from __future__ import annotations

from typing import Any

from tinymlops.bundle.container import pack, unpack
from tinymlops.bundle.reader import (
    CheckResult,
    OpenedBundle,
    VerifiedBundle,
    inspect_bundle,
    open_bundle,
    run_check,
    verify_bundle,
)

_LAZY = {
    "BuildResult": "tinymlops.bundle.builder",
    "build_bundle": "tinymlops.bundle.builder",
    "release_key": "tinymlops.bundle.workspace_keys",
    "release_public_key": "tinymlops.bundle.workspace_keys",
    "fleet_key": "tinymlops.bundle.workspace_keys",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tinymlops.bundle' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "CheckResult",
    "OpenedBundle",
    "VerifiedBundle",
    "inspect_bundle",
    "open_bundle",
    "pack",
    "run_check",
    "unpack",
    "verify_bundle",
]
