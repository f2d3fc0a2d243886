"""``tinymlops.toml``: which recipes exist and which chains of them run for which model/target.

A *chain* is a string ``"a>b>c"``: recipe step ``a`` derives a variant from the base, ``b`` a
variant of that variant, and so on; the variant's name is the path ``a/b/c``. Chains that
share a prefix share the variant derived for it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinymlops.errors import ConfigError

STEP_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")

DEFAULT_CONFIG = """\
# tinymlops workspace configuration. Written by `tinymlops init`; edit freely.

[workspace]
# SQLAlchemy URL of the metadata database; relative SQLite paths are inside the workspace.
# The environment variable TINYMLOPS_DB_URL overrides it (e.g. a PostgreSQL URL).
database = "sqlite:///metadata.db"

[evaluation]
# samples of the eval set used for accuracy/agreement (0 = all)
max_samples = 512
# batch-1 latency: warm-up runs, then timed runs (p50/p95 are reported)
warmup = 10
runs = 100

# --- recipe steps: a name you choose -> a recipe plug-in and its parameters -------------
[recipes.fp16]
recipe = "fp16"

# dynamic int8: weights quantized offline, activations at run time. Often SLOWER than fp32
# for small CNNs on x86; the evaluation table shows the measured latency, selection uses it.
[recipes.int8-dynamic]
recipe = "quantize-dynamic"
params = { weight_type = "qint8" }

# static int8 (QDQ), calibrated on the model's registered dataset (or generated inputs,
# recorded as such). u8 activations + s8 weights is the pair ONNX Runtime's x86 kernels
# are fast for; s8/s8 is what many NPUs and MCUs want. Both are here so both get measured.
[recipes.int8-static]
recipe = "quantize-static"
params = { activation_type = "quint8", weight_type = "qint8" }

[recipes.int8-static-s8s8]
recipe = "quantize-static"
params = { activation_type = "qint8", weight_type = "qint8", per_channel = true }

[recipes.prune-50]
recipe = "prune"
params = { sparsity = 0.5 }

# TFLite base models: converted to ONNX only when outputs match within the tolerance.
[recipes.onnx]
recipe = "tflite-to-onnx"
params = { tolerance = 1e-4 }

# --- which chains run -------------------------------------------------------------------
[derive]
# applied to every new base version of every model ("a>b" derives b from a's output).
# For TFLite models, chains whose first step needs ONNX start from the "onnx" conversion.
default = ["fp16", "int8-dynamic", "int8-static", "prune-50", "prune-50>int8-static"]

# per-model override:
# [derive.models.my-model]
# chains = ["int8-static"]

# per-target chains: variants derived for (and tagged with) a device profile. s8 activations
# with per-channel s8 weights is the layout many phone NPUs and MCU kernels expect.
[derive.targets.android-nnapi-phone]
chains = ["int8-static-s8s8"]
"""


@dataclass(frozen=True)
class StepConfig:
    name: str
    recipe: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class ChainConfig:
    steps: tuple[str, ...]
    target: str | None = None

    @property
    def variant(self) -> str:
        return "/".join(self.steps)


@dataclass(frozen=True)
class EvaluationConfig:
    max_samples: int = 512
    warmup: int = 10
    runs: int = 100


@dataclass(frozen=True)
class WorkspaceConfig:
    database: str = "sqlite:///metadata.db"
    steps: Mapping[str, StepConfig] = field(default_factory=dict)
    default_chains: tuple[str, ...] = ()
    model_chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    target_chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    conversion_step: str = "onnx"

    def chains_for(self, model: str) -> list[ChainConfig]:
        """The chains that run for a new base version of ``model`` (model override or default,
        then every per-target chain)."""
        base = self.model_chains.get(model, self.default_chains)
        chains = [ChainConfig(tuple(c.split(">"))) for c in base]
        for target, target_chains in sorted(self.target_chains.items()):
            chains += [ChainConfig(tuple(c.split(">")), target) for c in target_chains]
        return chains


def _table(data: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table")
    return data


def _chains(value: Any, where: str, steps: Mapping[str, StepConfig]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ConfigError(f'{where} must be a list of chain strings like "prune-50>int8-static"')
    for chain in value:
        for step in chain.split(">"):
            if step not in steps:
                raise ConfigError(
                    f"{where}: chain '{chain}' uses step '{step}', which no [recipes.{step}] table defines"
                )
    return tuple(value)


def parse_config(text: str, source: str = "tinymlops.toml") -> WorkspaceConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    allowed = {"workspace", "evaluation", "recipes", "derive"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)}")
    ws = _table(data.get("workspace", {}), f"{source}: [workspace]")
    database = ws.get("database", "sqlite:///metadata.db")
    if not isinstance(database, str) or not database:
        raise ConfigError(f"{source}: [workspace] database must be a SQLAlchemy URL string")

    ev = _table(data.get("evaluation", {}), f"{source}: [evaluation]")
    evaluation = EvaluationConfig()
    for key in ("max_samples", "warmup", "runs"):
        if key in ev and (not isinstance(ev[key], int) or isinstance(ev[key], bool) or ev[key] < 0):
            raise ConfigError(f"{source}: [evaluation] {key} must be a non-negative integer")
    if set(ev) - {"max_samples", "warmup", "runs"}:
        raise ConfigError(
            f"{source}: [evaluation] unknown key(s) {sorted(set(ev) - {'max_samples', 'warmup', 'runs'})}"
        )
    evaluation = EvaluationConfig(**{k: ev[k] for k in ("max_samples", "warmup", "runs") if k in ev})
    if evaluation.runs < 1:
        raise ConfigError(f"{source}: [evaluation] runs must be at least 1")

    steps: dict[str, StepConfig] = {}
    for name, table in _table(data.get("recipes", {}), f"{source}: [recipes]").items():
        where = f"{source}: [recipes.{name}]"
        if not STEP_NAME.match(name):
            raise ConfigError(f"{where}: step names use lowercase letters, digits, '-', '_' and '.'")
        table = _table(table, where)
        if set(table) - {"recipe", "params"}:
            raise ConfigError(f"{where}: unknown key(s) {sorted(set(table) - {'recipe', 'params'})}")
        recipe = table.get("recipe")
        if not isinstance(recipe, str) or not recipe:
            raise ConfigError(f"{where}: 'recipe' must name a recipe plug-in")
        steps[name] = StepConfig(name, recipe, dict(_table(table.get("params", {}), f"{where} params")))

    derive = _table(data.get("derive", {}), f"{source}: [derive]")
    if set(derive) - {"default", "models", "targets"}:
        raise ConfigError(f"{source}: [derive] unknown key(s) {sorted(set(derive) - {'default', 'models', 'targets'})}")
    default = _chains(derive.get("default", []), f"{source}: [derive] default", steps)
    model_chains = {
        m: _chains(_table(t, f"[derive.models.{m}]").get("chains", []), f"{source}: [derive.models.{m}]", steps)
        for m, t in _table(derive.get("models", {}), f"{source}: [derive.models]").items()
    }
    target_chains = {
        t: _chains(_table(v, f"[derive.targets.{t}]").get("chains", []), f"{source}: [derive.targets.{t}]", steps)
        for t, v in _table(derive.get("targets", {}), f"{source}: [derive.targets]").items()
    }
    return WorkspaceConfig(
        database=database,
        steps=steps,
        default_chains=default,
        model_chains=model_chains,
        target_chains=target_chains,
        evaluation=evaluation,
    )


def load_config(path: Path) -> WorkspaceConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_config(text, str(path))
