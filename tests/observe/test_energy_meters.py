"""Energy meters on a fake sysfs tree (the same files and semantics as /sys/class/powercap):
package domains summed, sub-domains not added twice, counter wrap-around, unreadable and broken
files; the power model; best_meter's fallback with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tinymlops.errors import OperationError, UsageError
from tinymlops.observe.energy import PowerModelMeter, RaplMeter, best_meter
from tinymlops.spec.profile import DeviceProfile

RANGE = 262_143_328_850  # a real package's max_energy_range_uj


def _domain(root: Path, name: str, energy_uj: int, range_uj: int = RANGE) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "name").write_text("package-0\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{range_uj}\n")
    return d


def _set(d: Path, energy_uj: int) -> None:
    (d / "energy_uj").write_text(f"{energy_uj}\n")


def test_packages_are_summed_and_sub_domains_are_not_added_again(tmp_path: Path) -> None:
    p0 = _domain(tmp_path, "intel-rapl:0", 1_000_000)
    p1 = _domain(tmp_path, "intel-rapl:1", 5_000_000)
    core = _domain(tmp_path, "intel-rapl:0:0", 400_000)  # inside package 0
    _domain(tmp_path, "intel-rapl-mmio:0", 7)  # another driver's zone, not a package
    meter = RaplMeter.open(tmp_path)
    assert meter.domains == ["intel-rapl:0", "intel-rapl:1"] and meter.method == "rapl"
    assert meter.read() == 0.0
    _set(p0, 3_500_000)
    _set(p1, 5_250_000)
    _set(core, 900_000)
    assert meter.read() == pytest.approx(2.75)  # 2.5 J + 0.25 J
    assert meter.read() == pytest.approx(2.75)  # no change: no energy


def test_a_wrapped_counter_is_counted_across_the_wrap(tmp_path: Path) -> None:
    p0 = _domain(tmp_path, "intel-rapl:0", 999_000, range_uj=1_000_000)
    meter = RaplMeter.open(tmp_path)
    _set(p0, 999_900)
    assert meter.read() == pytest.approx(900e-6)
    _set(p0, 200)  # wrapped: 100 µJ to the top, then 200 µJ
    assert meter.read() == pytest.approx(1_200e-6)
    assert meter.wraps == 1
    _set(p0, 300)
    assert meter.read() == pytest.approx(1_300e-6)


def test_missing_broken_or_out_of_range_files_make_rapl_unavailable(tmp_path: Path) -> None:
    with pytest.raises(OperationError, match="cannot list"):
        RaplMeter.open(tmp_path / "nothing-here")
    with pytest.raises(OperationError, match="no intel-rapl package"):
        RaplMeter.open(tmp_path)
    d = _domain(tmp_path, "intel-rapl:0", 10)
    (d / "energy_uj").write_text("garbage\n")
    with pytest.raises(OperationError, match="cannot read"):
        RaplMeter.open(tmp_path)
    _set(d, RANGE + 1)
    with pytest.raises(OperationError, match="outside its range"):
        RaplMeter.open(tmp_path)
    _set(d, 10)
    meter = RaplMeter.open(tmp_path)
    (d / "energy_uj").unlink()  # the driver went away mid-run
    with pytest.raises(OperationError, match="cannot be read any more"):
        meter.read()


def test_a_counter_only_root_may_read_makes_rapl_unavailable() -> None:
    """Since Linux 5.10 energy_uj is mode 0400 root. As root, the check runs in a child process that
    drops to 'nobody' first (root reads any file); otherwise the file is made unreadable here."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        os.chmod(root, 0o755)
        dom = _domain(root, "intel-rapl:0", 123)
        os.chmod(dom / "energy_uj", 0o400)
        for p in (root, dom):
            os.chmod(p, 0o755)
        code = textwrap.dedent(
            f"""
            import os, sys
            from tinymlops.errors import OperationError
            from tinymlops.observe.energy import RaplMeter
            if os.geteuid() == 0:  # imported first: nobody may not read the interpreter's files
                os.setgid(65534); os.setuid(65534)
            try:
                RaplMeter.open({str(root)!r})
            except OperationError as exc:
                print(exc.message); sys.exit(0)
            print("readable"); sys.exit(1)
            """
        )
        if os.geteuid() != 0:
            os.chmod(dom / "energy_uj", 0o000)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "not readable by this process" in out.stdout and "energy_uj" in out.stdout


def test_the_power_model_is_cpu_time_times_active_power() -> None:
    ticks = iter([10.0, 10.5, 12.0])
    meter = PowerModelMeter(4.0, cpu_clock=lambda: next(ticks))
    assert meter.method == "model"
    a, b, c = meter.read(), meter.read(), meter.read()
    assert (b - a, c - b) == (2.0, 6.0)
    with pytest.raises(UsageError):
        PowerModelMeter(-1.0)
    # with the real thread clock: busy work costs energy, sleeping does not
    real = PowerModelMeter(10.0)
    e0, cpu0 = real.read(), time.thread_time()
    while time.thread_time() - cpu0 < 0.02:  # 20 ms of this thread's CPU, however loaded the machine
        pass
    busy = real.read() - e0
    e1 = real.read()
    time.sleep(0.05)
    asleep = real.read() - e1
    assert busy >= 0.2 and asleep < 0.05  # 10 W × 20 ms = 0.2 J; a sleeping thread burns ~nothing


def test_best_meter_prefers_rapl_and_falls_back_to_the_profile(tmp_path: Path) -> None:
    profile = DeviceProfile(
        name="rpi-4",
        device_class="sbc",
        backends=("onnxruntime",),
        dtypes=("fp32",),
        ram_mb=4096,
        storage_mb=16000,
        relative_compute=0.2,
        active_power_w=6.4,
        idle_power_w=2.7,
    )
    fallback = best_meter(profile, rapl_root=tmp_path / "absent")
    assert isinstance(fallback, PowerModelMeter) and fallback.active_power_w == 6.4
    assert "RAPL is not available" in fallback.note
    _domain(tmp_path, "intel-rapl:0", 5)
    assert isinstance(best_meter(profile, rapl_root=tmp_path), RaplMeter)
    with pytest.raises(UsageError, match="active_power_w"):
        best_meter(object(), rapl_root=tmp_path / "absent")
