"""Listings pause the cyclic collector while they build records, and always restore it."""

from __future__ import annotations

import gc

import pytest

from tinymlops.errors import ModelNotFoundError


def test_listing_restores_the_collector_state(sqlite_workspace, digits_model) -> None:
    reg = sqlite_workspace.registry
    reg.register("digits", digits_model.onnx)
    assert gc.isenabled()
    assert reg.artifacts("digits") and reg.lineage("digits")
    assert gc.isenabled()
    with pytest.raises(ModelNotFoundError):  # an error inside leaves it on too
        reg.artifacts("nope")
    assert gc.isenabled()
    gc.disable()  # whoever turned it off keeps it off
    try:
        reg.lineage("digits")
        assert not gc.isenabled()
    finally:
        gc.enable()
