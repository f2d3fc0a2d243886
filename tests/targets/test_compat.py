from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinymlops.spec import DeviceProfile, ModelInfo, TensorSpec
from tinymlops.targets import CompatIssue, TargetCatalog, check_compatibility

MODELS = Path("/work/shared/models/mlperf-tiny")
MIB = 2**20


def info(
    fmt: str = "onnx",
    ops: dict[str, int] | None = None,
    *,
    opset: int | None = 17,
    weight_dtypes: tuple[str, ...] = ("float32",),
    compute_dtypes: tuple[str, ...] = ("float32",),
    peak: int = 10_000,
    weights: int = 20_000,
) -> ModelInfo:
    t = TensorSpec("x", ("batch", 10), "float32")
    return ModelInfo(
        format=fmt,
        inputs=(t,),
        outputs=(t,),
        operators=ops or {"Gemm": 1, "Relu": 1},
        parameters=weights // 4,
        macs=1000,
        peak_activation_bytes=peak,
        weight_bytes=weights,
        weight_dtypes=weight_dtypes,
        compute_dtypes=compute_dtypes,
        opset=opset if fmt == "onnx" else None,
    )


def profile(**kw: object) -> DeviceProfile:
    base: dict[str, object] = dict(
        name="board",
        device_class="sbc",
        backends=("onnxruntime", "litert"),
        dtypes=("fp32", "fp16", "int8"),
        ram_mb=1.0,
        storage_mb=1.0,
        relative_compute=0.25,
        active_power_w=2.0,
        idle_power_w=0.5,
    )
    base.update(kw)
    return DeviceProfile(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def catalog() -> TargetCatalog:
    return TargetCatalog()


def test_compatible_model_and_estimates() -> None:
    report = check_compatibility(info(), 50_000, profile(), host_latency_ms=2.0)
    assert report.compatible and report.issues == []
    assert report.estimated_latency_ms == pytest.approx(8.0)
    assert report.latency_basis.startswith("estimate") and "relative_compute" in report.latency_basis
    assert report.ram_needed_bytes == 30_000 and "peak_activation_bytes + weight_bytes" in report.ram_basis
    assert report.storage_needed_bytes == 50_000
    assert check_compatibility(info(), 1, profile()).estimated_latency_ms is None
    json.dumps(report.to_dict())


def test_format_needs_a_backend_the_device_has(catalog: TargetCatalog) -> None:
    report = check_compatibility(info("onnx"), 1000, catalog.get("mcu-cortex-m7"))
    assert not report.compatible
    [issue] = report.issues_of("backend")
    assert "onnxruntime" in issue.message and "litert" in issue.message
    odd = ModelInfo(**{**info().__dict__, "format": "pte"})
    assert check_compatibility(odd, 1000, profile()).issues_of("format")


def test_every_unsupported_operator_is_reported_separately() -> None:
    p = profile(onnx_operators=("Conv", "Relu", "Gemm", "com.microsoft::QLinearAdd"))
    ops = {
        "Conv": 2,
        "Relu": 2,
        "Gemm": 1,
        "Erf": 1,
        "HardSwish": 3,
        "com.microsoft::FusedConv": 1,
        "com.microsoft::QLinearAdd": 1,
        "QLinearAdd": 1,
    }
    report = check_compatibility(info(ops=ops), 1000, p)
    assert sorted(i.subject for i in report.issues_of("operator")) == sorted(
        ["Erf", "HardSwish", "com.microsoft::FusedConv", "QLinearAdd"]
    )
    assert len(report.issues) == 4
    assert any("3×" in i.message for i in report.issues)


def test_no_operator_list_means_every_op_of_ort_cpu_domains() -> None:
    ops = {
        "Conv": 1,
        "com.microsoft::FusedConv": 1,
        "ai.onnx.ml::TreeEnsembleClassifier": 1,
        "acme::Magic": 1,
    }
    report = check_compatibility(info(ops=ops), 1000, profile())
    assert [i.subject for i in report.issues] == ["acme::Magic"]


def test_tflite_operators(catalog: TargetCatalog) -> None:
    mcu = catalog.get("mcu-cortex-m7")
    ops = {"CONV_2D": 1, "FULLY_CONNECTED": 1, "FLEX_ERF": 1, "NON_MAX_SUPPRESSION_V5": 1}
    report = check_compatibility(
        info("tflite", ops, weight_dtypes=("int8", "int32"), compute_dtypes=("int8",), peak=1000, weights=1000),
        2000,
        mcu,
    )
    assert sorted(i.subject for i in report.issues) == ["FLEX_ERF", "NON_MAX_SUPPRESSION_V5"]
    assert {i.kind for i in report.issues} == {"operator"}


def test_opset_range_onnx_only() -> None:
    p = profile(min_opset=9, max_opset=13)
    assert check_compatibility(info(opset=13), 1, p).compatible
    [issue] = check_compatibility(info(opset=17), 1, p).issues
    assert issue.kind == "opset" and "17" in issue.message and "[9, 13]" in issue.message
    assert check_compatibility(info(opset=8), 1, p).issues_of("opset")
    assert check_compatibility(info(opset=None), 1, p).compatible
    assert check_compatibility(info("tflite", {"ADD": 1}), 1, p).compatible


def test_dtypes_are_mapped_and_each_unsupported_one_reported() -> None:
    p = profile(dtypes=("int8",))
    report = check_compatibility(
        info(weight_dtypes=("float16", "int8", "int32"), compute_dtypes=("float32", "uint8", "int64", "bool")),
        1,
        p,
    )
    assert sorted(i.subject for i in report.issues) == ["fp16", "fp32"]
    assert all(i.kind == "dtype" for i in report.issues)
    # uint8 maps to int8; index types always allowed
    assert check_compatibility(
        info(weight_dtypes=("uint8", "int32"), compute_dtypes=("int8", "int64")), 1, p
    ).compatible
    # dtypes with no equivalent in the profile vocabulary
    odd = check_compatibility(info(weight_dtypes=("float64",), compute_dtypes=("int16",)), 1, profile())
    assert sorted(i.subject for i in odd.issues) == ["float64", "int16"]
    # labels, shapes and scikit-learn's ZipMap output are plumbing, not compute precision
    plumbing = info(
        weight_dtypes=("float32", "uint64"), compute_dtypes=("float32", "string", "seq(map(int64,float32))")
    )
    assert check_compatibility(plumbing, 1, profile(dtypes=("fp32",))).compatible


def test_memory_and_storage_limits() -> None:
    p = profile(ram_mb=1.0, storage_mb=2.0)
    fits = info(peak=MIB // 2, weights=MIB // 2)
    assert check_compatibility(fits, 2 * MIB, p).compatible  # exactly at the limits
    too_big = info(peak=MIB // 2, weights=MIB // 2 + 1)
    report = check_compatibility(too_big, 2 * MIB + 1, p)
    assert [i.kind for i in report.issues] == ["memory", "storage"]
    assert "RAM" in report.issues[0].message and "storage" in report.issues[1].message


def test_all_problems_at_once(catalog: TargetCatalog) -> None:
    mcu = catalog.get("mcu-cortex-m7")
    big = info(
        "tflite",
        {"CONV_2D": 1, "FLEX_ERF": 1},
        weight_dtypes=("float16",),
        compute_dtypes=("float32",),
        peak=3 * MIB,
        weights=1 * MIB,
    )
    report = check_compatibility(big, 5 * MIB, mcu)
    assert [i.kind for i in report.issues] == ["operator", "dtype", "memory", "storage"]
    assert "incompatible with mcu-cortex-m7" in report.summary()


def test_issue_kind_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown compatibility issue kind"):
        CompatIssue("vibes", "bad")


def test_phone_profiles_use_ort_tables(catalog: TargetCatalog) -> None:
    ops = {"Conv": 1, "Erf": 1, "Flatten": 1}
    android = check_compatibility(info(ops=ops), 1, catalog.get("android-nnapi-phone"))
    ios = check_compatibility(info(ops=ops), 1, catalog.get("ios-coreml-phone"))
    assert [i.subject for i in android.issues] == ["Erf"]
    assert [i.subject for i in ios.issues] == ["Flatten"]  # ML Program table has Erf but no Flatten


@pytest.mark.skipif(not (MODELS / "kws_ref_model.tflite").exists(), reason="MLPerf Tiny models not present")
def test_real_kws_model_with_registry_inspector(catalog: TargetCatalog) -> None:
    inspect = pytest.importorskip("tinymlops.registry.inspect")
    for name in ("kws_ref_model.tflite", "kws_ref_model_float32.tflite"):
        data = (MODELS / name).read_bytes()
        model_info = inspect.inspect_model(data)
        for target in ("mcu-cortex-m7", "rpi-4"):
            report = check_compatibility(model_info, len(data), catalog.get(target), host_latency_ms=0.2)
            assert report.compatible, (name, target, report.issues)
            assert report.ram_needed_bytes < 200_000
        assert check_compatibility(
            model_info, len(data), catalog.get("mcu-cortex-m7"), host_latency_ms=0.2
        ).estimated_latency_ms == pytest.approx(100.0)
    # the same file on a profile that only runs ONNX Runtime is rejected for its format
    onnx_only = profile(backends=("onnxruntime",), ram_mb=64, storage_mb=64)
    report = check_compatibility(model_info, len(data), onnx_only)
    assert [i.kind for i in report.issues] == ["backend"]
