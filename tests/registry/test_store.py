"""The registry service, one shared suite run against SQLite and PostgreSQL."""

from __future__ import annotations

import io

import numpy as np
import pytest
from sqlalchemy import func, select

from mlperf_models import mlperf
from tinymlops.errors import (
    InvalidDatasetError,
    InvalidModelError,
    ModelNotFoundError,
    ModelRefError,
    StoreError,
)
from tinymlops.registry.schema import ArtifactRow, DatasetRow, DerivationRow, ModelRow
from tinymlops.spec.recipe import RecipeSpec


def _counts(ws) -> dict[str, int]:
    with ws.engine.connect() as conn:
        return {
            t.__tablename__: conn.scalar(select(func.count()).select_from(t))
            for t in (ModelRow, ArtifactRow, DerivationRow, DatasetRow)
        }


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_register_versions_and_resolve(workspace, digits_model) -> None:
    reg = workspace.registry
    v1 = reg.register("digits", digits_model.onnx, source="test", tags=["a", "b", "a"])
    v2 = reg.register("digits", digits_model.onnx, source="test")
    assert (v1.version, v2.version) == (1, 2)
    assert v1.sha256 == v2.sha256 and workspace.blobs.exists(v1.sha256)
    assert v1.tags == ("a", "b")
    assert reg.resolve("digits").id == v2.id
    assert reg.resolve("digits:latest").id == v2.id
    assert reg.resolve("digits:1").id == v1.id
    info = v1.info
    assert info.format == "onnx" and info.opset and info.parameters == digits_model.parameters
    assert "Conv" in info.operators and info.macs > 0 and info.peak_activation_bytes > 0
    assert reg.read_bytes(v1) == digits_model.onnx


def test_unknown_refs_are_clear_errors(workspace, digits_model) -> None:
    reg = workspace.registry
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
        reg.resolve("nope")
    reg.register("digits", digits_model.onnx)
    with pytest.raises(ModelNotFoundError, match="has no version 7"):
        reg.resolve("digits:7")
    with pytest.raises(ModelNotFoundError, match="no variant 'fp16'"):
        reg.resolve("digits:1/fp16")
    with pytest.raises(ModelRefError):
        reg.resolve("digits:0")
    with pytest.raises(ModelRefError):
        reg.resolve("bad name!")


@pytest.mark.parametrize(
    "data",
    [b"", b"not a model at all", b"\x08\x07garbage-protobuf" * 3, b"1234TFL3" + b"\x00" * 20],
    ids=["empty", "text", "bad-onnx", "bad-tflite"],
)
def test_corrupt_model_leaves_registry_unchanged(workspace, data: bytes) -> None:
    before = (_counts(workspace), workspace.blobs.digests())
    with pytest.raises(InvalidModelError):
        workspace.registry.register("broken", data)
    assert (_counts(workspace), workspace.blobs.digests()) == before


def test_truncated_model_is_refused(workspace, digits_model) -> None:
    with pytest.raises(InvalidModelError):
        workspace.registry.register("digits", digits_model.onnx[: len(digits_model.onnx) // 2])
    assert _counts(workspace)["artifacts"] == 0


def test_tflite_models_register_with_operators(workspace) -> None:
    data = mlperf("kws_ref_model.tflite").read_bytes()
    a = workspace.registry.register("kws", data)
    assert a.format == "tflite"
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(a.info.operators)
    assert a.info.inputs[0].dtype == "int8" and a.info.inputs[0].quantization is not None


def test_variants_and_lineage(workspace, digits_model) -> None:
    reg = workspace.registry
    base = reg.register("digits", digits_model.onnx)
    recipe = RecipeSpec(name="copy", recipe="identity", params={"x": 1}, tools={"numpy": np.__version__})
    child = reg.add_variant(base, digits_model.onnx + b"", base.info, recipe, variant="copy")
    grandchild = reg.add_variant(child, digits_model.onnx, base.info, recipe, variant="copy/again")
    reg.record_failed_derivation(base, "broken", {"recipe": "x"}, "it broke", details={"max_abs_diff": 3.5})
    assert reg.resolve("digits:1/copy/again").id == grandchild.id
    assert grandchild.recipe == recipe
    forest = reg.lineage("digits")
    assert len(forest) == 1
    root = forest[0]
    assert root.artifact_id == base.id and root.recipe is None and root.status == "ready"
    names = sorted(n.ref for n in root.children)
    assert names == ["digits:1/broken", "digits:1/copy"]
    copy = next(n for n in root.children if n.status == "ready")
    assert copy.recipe["recipe"] == "identity" and copy.recipe["params"] == {"x": 1}
    assert [n.artifact_id for n in copy.children] == [grandchild.id]
    failed = next(n for n in root.children if n.status != "ready")
    assert failed.error == "it broke" and failed.error_details["max_abs_diff"] == 3.5
    reg.add_evaluation(child.id, "generated:seed=0", "host", {"accuracy": 0.5})
    reg.add_evaluation(child.id, "generated:seed=0", "host", {"accuracy": 0.75})
    copy = next(n for n in reg.lineage("digits")[0].children if n.status == "ready")
    assert copy.metrics == {"accuracy": 0.75}  # the newest evaluation
    assert [c["ref"] for c in reg.lineage("digits")[0].to_dict()["children"]] == ["digits:1/copy", "digits:1/broken"]
    with pytest.raises(ModelNotFoundError, match="it broke"):
        reg.resolve("digits:1/broken")
    summary = reg.list_models()[0]
    assert (summary.versions, summary.variants, summary.failed_derivations) == (1, 2, 1)


def test_datasets_checked_against_model(workspace, digits_model) -> None:
    reg = workspace.registry
    reg.register("digits", digits_model.onnx)
    good = reg.add_dataset("digits", "test", digits_model.npz("test"))
    assert good.n_samples == len(digits_model.y_test) and good.has_labels
    before = _counts(workspace)
    with pytest.raises(InvalidDatasetError, match="does not match the model input"):
        reg.add_dataset("digits", "wrong", _npz(x=np.zeros((4, 1, 9, 9), np.float32)))
    with pytest.raises(InvalidDatasetError, match="no array named 'x'"):
        reg.add_dataset("digits", "nox", _npz(z=np.zeros(3)))
    with pytest.raises(InvalidDatasetError, match="one label per sample"):
        reg.add_dataset("digits", "y", _npz(x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros(3, np.int64)))
    with pytest.raises(InvalidDatasetError, match="not a readable"):
        reg.add_dataset("digits", "junk", b"PK\x03\x04junk")
    with pytest.raises(InvalidDatasetError, match="NaN"):
        reg.add_dataset("digits", "nan", _npz(x=np.full((2, 1, 8, 8), np.nan, np.float32)))
    assert _counts(workspace) == before
    loaded = reg.load_dataset(good)
    assert np.array_equal(loaded.y, digits_model.y_test)


def test_blob_corruption_is_detected(workspace, digits_model) -> None:
    a = workspace.registry.register("digits", digits_model.onnx)
    path = workspace.blobs._path(a.sha256)
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(StoreError, match="corrupt"):
        workspace.registry.read_bytes(a)
    assert workspace.registry.check_integrity()


def test_orphan_blobs_are_collected(workspace, digits_model) -> None:
    orphan = workspace.blobs.put(b"left by a crash between blob write and commit")
    a = workspace.registry.register("digits", digits_model.onnx)
    assert workspace.registry.collect_garbage() == [orphan]
    assert workspace.blobs.exists(a.sha256) and not workspace.blobs.exists(orphan)


def test_migrations_match_the_schema(workspace) -> None:
    """Alembic's autogenerate finds nothing to change: migrations and models agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from tinymlops.registry.schema import Base

    with workspace.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_reopening_keeps_everything(workspace, digits_model, tmp_path) -> None:
    from tinymlops.workspace import Workspace

    a = workspace.registry.register("digits", digits_model.onnx)
    again = Workspace.open(workspace.root, db_url=workspace.db_url)
    assert again.registry.resolve("digits").sha256 == a.sha256
    again.close()
