"""Drift detection quality from sketches, on real data, side by side with the same tests on raw data.

The data: scikit-learn's breast cancer set (569 samples), its first 20 features (continuous). The
dataset plays the population: each window draws a *reference* (the eval set: 569 samples with
replacement, sketched once, k = 200) and a *live* window of 10 devices × 1,000 samples (each
bootstrap-resampled; each device sketches its 1,000 values per feature with k = 200, serializes
the sketch; the server checks and deserializes the 10 sketches and merges them, as it will).
No-drift windows leave the data as it is; drifted windows add a shift to one feature (rotating
over the 20) on all devices or on some of them. Every window runs:

* from sketches: :func:`tinymlops.observe.drift.drift_report` with the default policy (KS and
  Wasserstein decide, Bonferroni over the 20 features; KS corrected conservatively for the
  sketches' rank error), and each test's own verdict at its threshold (KS at α = 0.01/20 in its
  three rank-error modes; PSI > 0.2; JS > 0.1; W1 > 0.1 reference SD);
* on raw data, the same tests: ``scipy.stats.ks_2samp(method="asymp")``, ``wasserstein_distance``
  (divided by the raw reference's SD), ``scipy.spatial.distance.jensenshannon(base=2)`` and the PSI
  formula, both over the raw reference's exact deciles.

Reported per test: the detection rate (the shifted feature flagged), exact localisation (only it),
the false-alarm rate per window (any of the 20 flagged when nothing drifted) and per feature; the
agreement of each statistic and p-value with scipy's; bytes per sketch and per device window;
the server's time for one 20-feature report.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from _common import fmt_bytes, fmt_pct, goal, goals_table, stats_ms
from rich.table import Table

NAME = "drift"
TITLE = "Drift detection from sketches: 10 devices × 1,000 samples, 20 real features, vs scipy on raw data"
FEATURES = 20
DEVICES = 10
PER_DEVICE = 1000
K = 200
GOAL_SHIFT_SD = 0.5
GOAL_DETECTION = 0.90
GOAL_FALSE_ALARM = 0.05
TESTS = ("ks", "psi", "js", "wasserstein")

#: (label, shift in SDs, devices shifted)
SCENARIOS = (
    ("0.5 SD, all 10 devices", 0.5, 10),
    ("0.5 SD, 3 of 10 devices", 0.5, 3),
    ("0.25 SD, all 10 devices", 0.25, 10),
)


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"no_drift_windows": 10, "drift_windows": 10, "seed": 7}
    return {"no_drift_windows": 120, "drift_windows": 60, "seed": 7}


def _sketch(values: np.ndarray) -> Any:
    import datasketches

    s = datasketches.kll_floats_sketch(K)
    s.update(np.ascontiguousarray(values, dtype=np.float32))
    return s


def _raw_tests(ref: np.ndarray, live: np.ndarray) -> dict[str, dict[str, float]]:
    """The same tests on the raw values (float32, as the sketches hold them)."""
    from scipy import stats
    from scipy.spatial.distance import jensenshannon

    ks = stats.ks_2samp(ref, live, method="asymp")
    edges = np.unique(np.quantile(ref, np.arange(1, 10) / 10, method="inverted_cdf"))

    def bins(a: np.ndarray) -> np.ndarray:
        below = np.searchsorted(np.sort(a), edges, side="right") / a.size
        return np.diff(np.concatenate(([0.0], below, [1.0])))

    p, q = bins(ref), bins(live)
    pf, qf = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
    sd = float(ref.astype(np.float64).std())
    return {
        "ks": {"statistic": float(ks.statistic), "p_value": float(ks.pvalue)},
        "psi": {"statistic": float(np.sum((qf - pf) * np.log(qf / pf)))},
        "js": {"statistic": float(jensenshannon(p, q, base=2))},
        "wasserstein": {"statistic": float(stats.wasserstein_distance(ref, live)) / sd if sd > 0 else 0.0},
    }


def _window(
    rng: np.random.Generator, data: np.ndarray, sd: np.ndarray, shift: tuple[int, float, int] | None
) -> dict[str, Any]:
    from tinymlops.observe.drift import DriftPolicy, drift_report
    from tinymlops.observe.drift_inputs import load_kll_floats

    reference = data[rng.integers(0, len(data), len(data))].astype(np.float32)
    devices = [data[rng.integers(0, len(data), PER_DEVICE)].astype(np.float32) for _ in range(DEVICES)]
    if shift is not None:
        feature, amount, shifted = shift
        for d in devices[:shifted]:
            d[:, feature] += np.float32(amount * sd[feature])
    import datasketches

    device_bytes = [[_sketch(d[:, j]).serialize() for j in range(FEATURES)] for d in devices]
    t0 = time.perf_counter()
    live = {}
    for j in range(FEATURES):
        m = datasketches.kll_floats_sketch(K)
        for i in range(DEVICES):
            m.merge(load_kll_floats(device_bytes[i][j], what=f"device {i} feature {j}"))
        live[f"f{j}"] = (m, DEVICES * PER_DEVICE)
    merge_s = time.perf_counter() - t0
    ref_bytes = {f"f{j}": (_sketch(reference[:, j]).serialize(), len(reference)) for j in range(FEATURES)}
    t0 = time.perf_counter()
    report = drift_report(ref_bytes, live, policy=DriftPolicy())
    report_s = time.perf_counter() - t0
    pooled = np.vstack(devices)
    per_feature = []
    for j in range(FEATURES):
        finding = report.features[f"f{j}"]
        sketch_side = {r.test: r for r in finding.results}
        raw = _raw_tests(reference[:, j], pooled[:, j])
        ks = sketch_side["ks"]
        alpha = ks.threshold  # Bonferroni-corrected by the report
        per_feature.append(
            {
                "policy": finding.verdict.value == "drift",
                "sketch": {
                    "ks_conservative": float(ks.details["p_value_high"]) < alpha,
                    "ks_point": (ks.p_value or 1.0) < alpha,
                    "ks_worst_case": float(ks.details["p_value_low"]) < alpha,
                    **{t: sketch_side[t].verdict.value == "drift" for t in ("psi", "js", "wasserstein")},
                },
                "raw": {
                    "ks": raw["ks"]["p_value"] < alpha,
                    "psi": raw["psi"]["statistic"] > sketch_side["psi"].threshold,
                    "js": raw["js"]["statistic"] > sketch_side["js"].threshold,
                    "wasserstein": raw["wasserstein"]["statistic"] > sketch_side["wasserstein"].threshold,
                },
                "statistics": {
                    t: {
                        "sketch": sketch_side[t].statistic,
                        "raw": raw[t]["statistic"],
                    }
                    for t in TESTS
                },
                "ks_p": {"sketch": ks.p_value, "raw": raw["ks"]["p_value"]},
                "ks_interval": (float(ks.details["statistic_low"]), float(ks.details["statistic_high"])),
            }
        )
    sizes = {
        "device_sketch": [len(b) for row in device_bytes for b in row],
        "merged_sketch": [len(live[f"f{j}"][0].serialize()) for j in range(FEATURES)],
        "reference_sketch": [len(ref_bytes[f"f{j}"][0]) for j in range(FEATURES)],
    }
    return {"features": per_feature, "merge_s": merge_s, "report_s": report_s, "sizes": sizes}


def _rates(windows: list[dict[str, Any]], shifted: list[int] | None) -> dict[str, Any]:
    """Per method: rate of windows where the shifted feature is flagged / only it is / anything is."""
    methods = ["policy"] + [f"sketch:{m}" for m in windows[0]["features"][0]["sketch"]]
    methods += [f"raw:{m}" for m in windows[0]["features"][0]["raw"]]

    def flags(w: dict[str, Any], method: str) -> list[bool]:
        if method == "policy":
            return [f["policy"] for f in w["features"]]
        side, name = method.split(":")
        return [f[side][name] for f in w["features"]]

    out = {}
    for method in methods:
        all_flags = [flags(w, method) for w in windows]
        if shifted is None:
            out[method] = {
                "false_alarm_window": float(np.mean([any(f) for f in all_flags])),
                "false_alarm_feature": float(np.mean([x for f in all_flags for x in f])),
            }
        else:
            out[method] = {
                "detected": float(np.mean([f[j] for f, j in zip(all_flags, shifted, strict=True)])),
                "only_that_feature": float(
                    np.mean([f[j] and sum(f) == 1 for f, j in zip(all_flags, shifted, strict=True)])
                ),
            }
    return out


def _agreement(windows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    feats = [f for w in windows for f in w["features"]]
    for t in TESTS:
        diffs = np.array([abs(f["statistics"][t]["sketch"] - f["statistics"][t]["raw"]) for f in feats])
        verdict = [f["sketch"][t if t != "ks" else "ks_point"] == f["raw"][t] for f in feats]
        out[t] = {
            "abs_diff_mean": float(diffs.mean()),
            "abs_diff_p99": float(np.quantile(diffs, 0.99)),
            "abs_diff_max": float(diffs.max()),
            "verdict_agreement": float(np.mean(verdict)),
        }
    inside = [f["ks_interval"][0] - 1e-12 <= f["statistics"]["ks"]["raw"] <= f["ks_interval"][1] + 1e-12 for f in feats]
    out["ks"]["raw_inside_rank_error_interval"] = float(np.mean(inside))
    logs = [
        abs(np.log10(max(f["ks_p"]["sketch"], 1e-300)) - np.log10(max(f["ks_p"]["raw"], 1e-300)))
        for f in feats
        if f["ks_p"]["raw"] > 1e-12
    ]
    out["ks"]["p_value_abs_log10_diff_median"] = float(np.median(logs)) if logs else None
    out["ks"]["p_value_abs_log10_diff_p95"] = float(np.quantile(logs, 0.95)) if logs else None
    out["ks"]["comparisons"] = len(feats)
    return out


def run(quick: bool) -> dict[str, Any]:
    from sklearn.datasets import load_breast_cancer

    cfg = _settings(quick)
    data = load_breast_cancer().data[:, :FEATURES]
    sd = data.std(axis=0)
    rng = np.random.default_rng(cfg["seed"])
    t0 = time.perf_counter()
    calm = [_window(rng, data, sd, None) for _ in range(cfg["no_drift_windows"])]
    scenarios = []
    for label, amount, shifted in SCENARIOS:
        targets = [i % FEATURES for i in range(cfg["drift_windows"])]
        windows = [_window(rng, data, sd, (j, amount, shifted)) for j in targets]
        scenarios.append(
            {"label": label, "shift_sd": amount, "devices_shifted": shifted, "rates": _rates(windows, targets)}
        )
        if (amount, shifted) == (GOAL_SHIFT_SD, DEVICES):
            agreement_windows = calm + windows
    elapsed = time.perf_counter() - t0
    no_drift = _rates(calm, None)
    agreement = _agreement(agreement_windows)
    sizes = {
        key: {
            "mean": float(np.mean([s for w in calm for s in w["sizes"][key]])),
            "max": int(max(s for w in calm for s in w["sizes"][key])),
        }
        for key in calm[0]["sizes"]
    }
    report_ms = stats_ms([w["report_s"] for w in calm])
    merge_ms = stats_ms([w["merge_s"] for w in calm])
    goal_rates = scenarios[0]["rates"]["policy"]
    goals = [
        goal(
            f"detection ≥ {GOAL_DETECTION:.0%} for a {GOAL_SHIFT_SD} SD shift in one of {FEATURES} features "
            f"({DEVICES} devices × {PER_DEVICE:,} samples, default policy, from sketches)",
            goal_rates["detected"] >= GOAL_DETECTION,
            f"{goal_rates['detected']:.1%} detected, {goal_rates['only_that_feature']:.1%} exactly that feature "
            f"({cfg['drift_windows']} windows)",
            "shifted feature's verdict from drift_report(DriftPolicy()) on merged device sketches",
        ),
        goal(
            f"false alarms ≤ {GOAL_FALSE_ALARM:.0%} of no-drift windows (any of {FEATURES} features, default policy)",
            no_drift["policy"]["false_alarm_window"] <= GOAL_FALSE_ALARM,
            f"{no_drift['policy']['false_alarm_window']:.1%} of {cfg['no_drift_windows']} windows",
            "a window raises an alarm when any feature's verdict is drift",
        ),
        goal(
            "the raw data's KS statistic lies in the sketch's stated rank-error interval",
            agreement["ks"]["raw_inside_rank_error_interval"] >= 0.99,
            f"{agreement['ks']['raw_inside_rank_error_interval']:.2%} of {agreement['ks']['comparisons']} comparisons",
            "[D - ε, D + ε], ε = the two sketches' normalized rank errors; raw D from scipy.stats.ks_2samp",
        ),
    ]
    return {
        "settings": {
            **cfg,
            "features": FEATURES,
            "devices": DEVICES,
            "per_device": PER_DEVICE,
            "k": K,
            "scenarios": [s[0] for s in SCENARIOS],
        },
        "method": __doc__,
        "elapsed_windows_s": elapsed,
        "no_drift": no_drift,
        "scenarios": scenarios,
        "agreement": agreement,
        "sketch_bytes": sizes,
        "raw_bytes_per_device_window": PER_DEVICE * FEATURES * 4,
        "report_ms": report_ms,
        "merge_ms": merge_ms,
        "goals": goals,
        "headline": {
            "detection_0.5sd": goal_rates["detected"],
            "exactly_that_feature_0.5sd": goal_rates["only_that_feature"],
            "false_alarm_window": no_drift["policy"]["false_alarm_window"],
            "device_sketch_bytes_mean": sizes["device_sketch"]["mean"],
            "report_ms_p50": round(report_ms["p50_ms"], 1),
        },
    }


def render(result: dict[str, Any]) -> list[Table]:
    methods = list(result["no_drift"])
    t = Table(title="Detection and false alarms per test (sketches vs raw data)", title_justify="left")
    t.add_column("method")
    t.add_column("false alarm / window", justify="right")
    t.add_column("false alarm / feature", justify="right")
    for s in result["scenarios"]:
        t.add_column(f"{s['label']}: detected / only it", justify="right")
    for m in methods:
        row = [
            m,
            fmt_pct(result["no_drift"][m]["false_alarm_window"]),
            fmt_pct(result["no_drift"][m]["false_alarm_feature"], 2),
        ]
        for s in result["scenarios"]:
            r = s["rates"][m]
            row.append(f"{fmt_pct(r['detected'])} / {fmt_pct(r['only_that_feature'])}")
        t.add_row(*row)
    a = Table(title="Sketch statistic vs scipy on the raw data", title_justify="left")
    for col in ("test", "mean |Δ|", "p99 |Δ|", "max |Δ|", "same verdict", "notes"):
        a.add_column(col, justify="right" if col not in ("test", "notes") else "left")
    for test, g in result["agreement"].items():
        notes = ""
        if test == "ks":
            notes = (
                f"raw D in [D-ε, D+ε]: {fmt_pct(g['raw_inside_rank_error_interval'], 2)}; "
                f"|log10 p| diff median {g['p_value_abs_log10_diff_median']:.3f}, "
                f"p95 {g['p_value_abs_log10_diff_p95']:.3f}"
            )
        a.add_row(
            test,
            f"{g['abs_diff_mean']:.4f}",
            f"{g['abs_diff_p99']:.4f}",
            f"{g['abs_diff_max']:.4f}",
            fmt_pct(g["verdict_agreement"], 2),
            notes,
        )
    b = Table(title="Bytes and server time", title_justify="left")
    b.add_column("what")
    b.add_column("value", justify="right")
    sb = result["sketch_bytes"]
    b.add_row(
        "device sketch (1,000 values, k=200), mean / max",
        f"{sb['device_sketch']['mean']:.0f} B / {sb['device_sketch']['max']} B",
    )
    b.add_row("merged sketch (10,000 values), mean", f"{sb['merged_sketch']['mean']:.0f} B")
    b.add_row("reference sketch (569 values), mean", f"{sb['reference_sketch']['mean']:.0f} B")
    per_device = sb["device_sketch"]["mean"] * FEATURES
    b.add_row(
        f"one device window, {FEATURES} features: sketches vs raw float32",
        f"{fmt_bytes(int(per_device))} vs {fmt_bytes(result['raw_bytes_per_device_window'])}",
    )
    b.add_row("check + merge 10 devices × 20 sketches (p50)", f"{result['merge_ms']['p50_ms']:.1f} ms")
    b.add_row(
        "drift report, 20 features × 4 tests (p50 / p95)",
        f"{result['report_ms']['p50_ms']:.1f} / {result['report_ms']['p95_ms']:.1f} ms",
    )
    return [t, a, b, goals_table(result)]
