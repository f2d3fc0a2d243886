"""The read-only model API over a real registry: list, show, a version with its variants and
metrics, lineage — for API keys with ``read`` scope (and above)."""

from __future__ import annotations

import numpy as np

import live_server
from live_server import Plane, error_of
from tinymlops.spec.recipe import RecipeSpec

plane_any_db = live_server.plane_any_db  # the live control plane (fixture)


def test_models_versions_variants_metrics_and_lineage(plane_any_db: Plane, digits_model) -> None:
    plane = plane_any_db
    reg = plane.ws.registry
    base = reg.register("digits", digits_model.onnx, source="test", tags=["demo"])
    recipe = RecipeSpec(name="copy", recipe="identity", params={"x": 1}, tools={"numpy": np.__version__})
    child = reg.add_variant(base, digits_model.onnx, base.info, recipe, variant="copy")
    reg.add_variant(child, digits_model.onnx, base.info, recipe, variant="copy/again")
    reg.record_failed_derivation(base, "broken", {"recipe": "x"}, "it broke")
    reg.add_evaluation(child.id, "generated:seed=0", "host", {"accuracy": 0.5})
    reg.add_evaluation(child.id, "generated:seed=0", "host", {"accuracy": 0.75})
    reg.register("digits", digits_model.onnx)  # version 2
    _, key = plane.api_key("read")
    http = plane.http(key)

    models = http.get("/v1/models").json()
    assert [(m["name"], m["versions"], m["variants"], m["failed_derivations"]) for m in models] == [("digits", 2, 2, 1)]

    shown = http.get("/v1/models/digits").json()
    assert [(v["version"], v["variants"]) for v in shown["version_list"]] == [(1, 2), (2, 0)]
    assert shown["version_list"][0]["sha256"] == base.sha256

    v1 = http.get("/v1/models/digits/versions/1").json()
    assert v1["base"]["ref"] == "digits:1" and v1["base"]["tags"] == ["demo"] and v1["base"]["recipe"] is None
    assert v1["base"]["info"]["format"] == "onnx"
    variants = {v["ref"]: v for v in v1["variants"]}
    assert set(variants) == {"digits:1/copy", "digits:1/copy/again"}
    assert variants["digits:1/copy"]["evaluation"]["metrics"] == {"accuracy": 0.75}  # the newest
    assert variants["digits:1/copy"]["recipe"]["params"] == {"x": 1}
    assert variants["digits:1/copy/again"]["evaluation"] is None
    assert [(d["ref"], d["error"]) for d in v1["failed_derivations"]] == [("digits:1/broken", "it broke")]

    forest = http.get("/v1/models/digits/lineage").json()
    assert [t["ref"] for t in forest] == ["digits:1", "digits:2"]
    kids = {c["ref"]: c for c in forest[0]["children"]}
    assert kids["digits:1/copy"]["metrics"] == {"accuracy": 0.75}
    assert [c["ref"] for c in kids["digits:1/copy"]["children"]] == ["digits:1/copy/again"]
    assert kids["digits:1/broken"]["status"] == "failed"
    only2 = http.get("/v1/models/digits/lineage", params={"version": 2}).json()
    assert [t["ref"] for t in only2] == ["digits:2"]

    r = http.get("/v1/models/digits/versions/7")
    assert r.status_code == 404 and "no version 7" in error_of(r)["message"]
    r = plane.http().get("/v1/models/digits")
    assert r.status_code == 401
