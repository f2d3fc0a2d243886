"""Listings fetch the bulky info/recipe JSON lazily, once per listing, and still give the same
records as looking each artifact up."""

from __future__ import annotations

from sqlalchemy import event


def test_listed_records_equal_resolved_ones_and_load_json_in_one_query(workspace, digits_model) -> None:
    from tinymlops.optimize.pipeline import register_model

    register_model(workspace, "digits", digits_model.onnx, calibration=digits_model.npz("train"))
    statements: list[str] = []
    event.listen(workspace.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    listed = workspace.registry.artifacts("digits")
    assert len(listed) >= 4
    assert not any("info" in s.split("FROM")[0] for s in statements), "the listing fetched the JSON up front"
    before = len(statements)
    for record in listed:  # every record's JSON, one query for all of them
        assert record.info.parameters > 0
        assert (record.recipe is None) == record.is_base
    assert len(statements) == before + 1
    for record in listed:
        resolved = workspace.registry.resolve(record.ref)
        assert record == resolved and record.to_dict() == resolved.to_dict()
        assert record.info_json == resolved.info_json and record.recipe_json == resolved.recipe_json
