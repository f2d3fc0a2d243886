"""Deriving variants: run the configured recipe chains on a new base version.

Chains sharing a prefix share its variant (``prune-50`` and ``prune-50>int8-static`` derive
``prune-50`` once). Each step is recorded as a derivation row: ``succeeded`` with its variant,
``failed`` with the error (never fatal for the others), or ``skipped`` when its parent failed.
A variant is written whole or not at all (blob first, then rows in one transaction).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinymlops.errors import InvalidModelError, TinyMLOpsError
from tinymlops.optimize.base import RecipeContext, get_recipe
from tinymlops.optimize.calibration import generated_inputs
from tinymlops.registry.inspect import inspect_model
from tinymlops.registry.records import ArtifactRecord, DerivationRecord
from tinymlops.registry.store import Registry
from tinymlops.spec.recipe import RecipeSpec
from tinymlops.workspace.config import ChainConfig, WorkspaceConfig

#: calibration rows generated when the model has no registered dataset
GENERATED_CALIBRATION_SAMPLES = 128


@dataclass
class _Node:
    path: str
    step: str
    parent: str  # "" = the base version
    targets: set[str] = field(default_factory=set)
    untargeted: bool = False


@dataclass(frozen=True)
class DerivationOutcome:
    variant: str
    status: str  # succeeded | failed | skipped | existing
    artifact: ArtifactRecord | None
    error: str = ""
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "status": self.status,
            "ref": self.artifact.ref if self.artifact else None,
            "error": self.error or None,
            "duration_s": round(self.duration_s, 3),
        }


def plan_chains(config: WorkspaceConfig, base: ArtifactRecord, chains: list[ChainConfig] | None = None) -> list[_Node]:
    """The unique variant paths to derive, parents before children."""
    chains = config.chains_for(base.model) if chains is None else chains
    nodes: dict[str, _Node] = {}
    for chain in chains:
        steps = list(chain.steps)
        if base.format != "onnx" and steps[0] != config.conversion_step:
            first = get_recipe(config.steps[steps[0]].recipe)
            if base.format not in first.input_formats and config.conversion_step in config.steps:
                steps.insert(0, config.conversion_step)
        parent = ""
        for i, step in enumerate(steps):
            path = "/".join(steps[: i + 1])
            node = nodes.setdefault(path, _Node(path, step, parent))
            if chain.target:
                node.targets.add(chain.target)
            else:
                node.untargeted = True
            parent = path
    return sorted(nodes.values(), key=lambda n: (n.path.count("/"), n.path))


def calibration_for(registry: Registry, base: ArtifactRecord, seed: int = 0) -> tuple[np.ndarray, str]:
    """The model's registered calibration (else eval) dataset, or generated inputs — and a label
    saying which, recorded with every variant calibrated on it."""
    record = registry.dataset_for(base.model, "calibration")
    if record is not None:
        return registry.load_dataset(record).x.astype(np.float32), record.label
    x = generated_inputs(base.info, GENERATED_CALIBRATION_SAMPLES, seed)
    return x, f"generated:seed={seed}"


def derive_variants(
    registry: Registry,
    config: WorkspaceConfig,
    base: ArtifactRecord,
    *,
    chains: list[ChainConfig] | None = None,
    seed: int = 0,
    on_step: Callable[[str, str], None] | None = None,
) -> list[DerivationOutcome]:
    """Run every chain for ``base``; return one outcome per variant path."""
    nodes = plan_chains(config, base, chains)
    existing = {a.variant: a for a in registry.artifacts(base.model, base.version)}
    produced: dict[str, ArtifactRecord] = {"": base}
    outcomes: list[DerivationOutcome] = []
    calibration: tuple[np.ndarray, str] | None = None

    for node in nodes:
        if on_step:
            on_step(node.path, "start")
        step = config.steps[node.step]
        recipe_doc: dict[str, Any] = {"name": step.name, "recipe": step.recipe, "params": dict(step.params)}
        if node.path in existing:
            produced[node.path] = existing[node.path]
            outcomes.append(DerivationOutcome(node.path, "existing", existing[node.path]))
            continue
        parent = produced.get(node.parent)
        if parent is None:
            reason = f"parent variant '{node.parent}' was not derived"
            d = registry.record_failed_derivation(base, node.path, recipe_doc, reason, status="skipped")
            outcomes.append(_outcome(d))
            continue
        started = time.perf_counter()
        try:
            recipe = get_recipe(step.recipe)
            params = recipe.resolve_params(step.params)
            if parent.format not in recipe.input_formats:
                raise InvalidModelError(
                    f"recipe '{step.recipe}' reads {', '.join(recipe.input_formats)} models; "
                    f"'{parent.ref}' is {parent.format}"
                )
            if calibration is None:
                calibration = calibration_for(registry, base, seed)
            ctx = RecipeContext(
                model=registry.read_bytes(parent),
                format=parent.format,
                info=parent.info,
                calibration=calibration[0],
                calibration_source=calibration[1],
                seed=seed,
            )
            out = recipe.apply(ctx, params)
            info = inspect_model(out.model)
            target = sorted(node.targets)[0] if node.targets and not node.untargeted else None
            spec = RecipeSpec(name=step.name, recipe=step.recipe, params=out.params, tools=out.tools, target=target)
            artifact = registry.add_variant(
                parent,
                out.model,
                info,
                spec,
                variant=node.path,
                details=_jsonable(out.notes),
                duration_s=time.perf_counter() - started,
                tags=[f"target:{t}" for t in sorted(node.targets)],
            )
            produced[node.path] = artifact
            outcomes.append(
                DerivationOutcome(node.path, "succeeded", artifact, duration_s=time.perf_counter() - started)
            )
        except Exception as exc:  # a failed recipe is recorded, never fatal for the others
            message = exc.message if isinstance(exc, TinyMLOpsError) else f"{type(exc).__name__}: {exc}"
            details = _jsonable(exc.details) if isinstance(exc, TinyMLOpsError) else {}
            d = registry.record_failed_derivation(
                parent, node.path, recipe_doc, message, details=details, duration_s=time.perf_counter() - started
            )
            outcomes.append(_outcome(d))
        if on_step:
            on_step(node.path, outcomes[-1].status)
    return outcomes


def _outcome(d: DerivationRecord) -> DerivationOutcome:
    return DerivationOutcome(d.variant, d.status, None, d.error, d.duration_s)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)
