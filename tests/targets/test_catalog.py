from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tinymlops.errors import ConfigError, SpecError, TargetNotFoundError
from tinymlops.spec import DeviceProfile
from tinymlops.targets import TargetCatalog, builtin_profiles, load_profile_file, load_table

BUILTINS = {
    "mcu-cortex-m7",
    "rpi-4",
    "rpi-zero-2w",
    "android-nnapi-phone",
    "ios-coreml-phone",
    "jetson-orin-nano",
    "x86-edge-server",
}

GOOD = """
spec_version = "1.0"
name = "{name}"
device_class = "sbc"
description = "test board"
backends = ["onnxruntime"]
dtypes = ["fp32"]
ram_mb = {ram}
storage_mb = 64
relative_compute = 0.1
active_power_w = 2.0
idle_power_w = 1.0
"""


def _write(directory: Path, filename: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(text, encoding="utf-8")
    return path


def test_all_builtins_load_and_round_trip() -> None:
    catalog = TargetCatalog()
    assert set(catalog.names()) >= BUILTINS
    assert catalog.names() == sorted(catalog.names())
    for profile in catalog.all():
        assert catalog.is_builtin(profile.name)
        assert len(profile.description) > 80, f"{profile.name}: state sources/assumptions"
        again = DeviceProfile.from_dict(profile.to_dict())
        assert again == profile
        if profile.onnx_operator_table is not None:
            assert load_table(profile.onnx_operator_table).ops


def test_builtin_numbers_are_plausible() -> None:
    p = builtin_profiles()
    mcu, pi4, zero, x86 = p["mcu-cortex-m7"], p["rpi-4"], p["rpi-zero-2w"], p["x86-edge-server"]
    assert mcu.backends == ("litert",) and mcu.ram_mb <= 2 and mcu.storage_mb <= 4
    assert "fp16" not in mcu.dtypes and "int8" in mcu.dtypes
    assert mcu.tflite_operators and {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(
        mcu.tflite_operators
    )
    assert mcu.relative_compute < zero.relative_compute < pi4.relative_compute < x86.relative_compute
    assert 1.0 <= x86.relative_compute <= 2.0 and x86.battery_wh is None
    assert pi4.ram_mb == 4096 and (pi4.active_power_w, pi4.idle_power_w) == (6.4, 2.7)
    assert p["android-nnapi-phone"].onnx_operator_table == "nnapi"
    assert p["ios-coreml-phone"].onnx_operator_table == "coreml-mlprogram"
    for phone in ("android-nnapi-phone", "ios-coreml-phone"):
        assert p[phone].battery_wh is not None and 10 <= p[phone].battery_wh <= 20


def test_builtin_files_are_named_after_their_profile() -> None:
    root = Path(__file__).resolve().parents[2] / "src" / "tinymlops" / "targets" / "profiles"
    for path in root.glob("*.toml"):
        assert tomllib.loads(path.read_text())["name"] == path.stem


def test_user_profile_overrides_builtin_and_adds_new(tmp_path: Path) -> None:
    targets = tmp_path / "targets"
    override = _write(targets, "my-pi.toml", GOOD.format(name="rpi-4", ram=2048))
    _write(targets, "board.toml", GOOD.format(name="my-board", ram=256))
    catalog = TargetCatalog.for_workspace(tmp_path)
    assert catalog.get("rpi-4").ram_mb == 2048
    assert catalog.source("rpi-4") == str(override) and not catalog.is_builtin("rpi-4")
    assert catalog.get("my-board").ram_mb == 256
    assert set(catalog.names()) == BUILTINS | {"my-board"}
    assert catalog.is_builtin("mcu-cortex-m7")
    # built-ins themselves are untouched
    assert builtin_profiles()["rpi-4"].ram_mb == 4096


def test_workspace_without_targets_dir_has_builtins(tmp_path: Path) -> None:
    assert set(TargetCatalog.for_workspace(tmp_path).names()) == BUILTINS


def test_unknown_target_names_known_ones() -> None:
    with pytest.raises(TargetNotFoundError) as err:
        TargetCatalog().get("rpi-5")
    assert "rpi-5" in str(err.value) and "rpi-4" in str(err.value) and "mcu-cortex-m7" in str(err.value)


@pytest.mark.parametrize(
    ("text", "error", "needle"),
    [
        (GOOD.format(name="x", ram=1) + "gpu_cores = 128\n", SpecError, "gpu_cores"),
        (GOOD.format(name="x", ram=1).replace('["fp32"]', '["fp64"]'), SpecError, "fp64"),
        (GOOD.format(name="x", ram=1).replace('"onnxruntime"', '"tensorrt"'), SpecError, "tensorrt"),
        (
            GOOD.format(name="x", ram=1).replace('spec_version = "1.0"', 'spec_version = "2.0"'),
            SpecError,
            "2.0",
        ),
        (GOOD.format(name="x", ram=1).replace("ram_mb = 1", "ram_mb = -1"), SpecError, "ram_mb"),
        (
            GOOD.format(name="x", ram=1) + "onnx_operator_table = 'tensorrt'\n",
            SpecError,
            "onnx_operator_table",
        ),
        ('name = "x"\nbackends = [onnxruntime\n', ConfigError, "not valid TOML"),
    ],
    ids=[
        "unknown-field",
        "bad-dtype",
        "bad-backend",
        "major-version",
        "negative",
        "bad-table",
        "broken-toml",
    ],
)
def test_bad_profiles_name_the_file(tmp_path: Path, text: str, error: type[Exception], needle: str) -> None:
    path = _write(tmp_path / "targets", "broken-board.toml", text)
    with pytest.raises(error) as err:
        load_profile_file(path)
    assert str(path) in str(err.value) and needle in str(err.value)
    with pytest.raises(error) as err:  # the catalog surfaces the same error
        TargetCatalog.for_workspace(tmp_path)
    assert str(path) in str(err.value)


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_profile_file(tmp_path / "nope.toml")


def test_duplicate_user_profiles_are_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "targets", "a.toml", GOOD.format(name="dup", ram=1))
    _write(tmp_path / "targets", "b.toml", GOOD.format(name="dup", ram=2))
    with pytest.raises(ConfigError, match="already defined"):
        TargetCatalog.for_workspace(tmp_path)


def test_catalog_without_builtins(tmp_path: Path) -> None:
    _write(tmp_path, "one.toml", GOOD.format(name="one", ram=1))
    catalog = TargetCatalog(tmp_path, builtins=False)
    assert catalog.names() == ["one"] and len(catalog) == 1 and "one" in catalog
    assert [p.name for p in catalog] == ["one"]
