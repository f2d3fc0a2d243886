"""The recipe plug-in interface: one recipe per module behind one base class (like Flower's
strategies). A recipe turns a parent model's bytes into a variant's bytes, deterministically:
same input bytes + same parameters + same tool versions -> same output bytes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from tinymlops.errors import ConfigError, RecipeNotFoundError
from tinymlops.spec.model_info import ModelInfo


@dataclass(frozen=True)
class RecipeContext:
    """Everything a recipe may look at.

    ``calibration`` holds float inputs for the model's single input in the parent's own layout
    (N first), from the model's registered dataset or generated; ``calibration_source`` says
    which ("dataset:<name>@<sha256 prefix>" or "generated:seed=<n>") and is recorded.
    """

    model: bytes
    format: str
    info: ModelInfo
    calibration: np.ndarray
    calibration_source: str
    seed: int = 0


@dataclass(frozen=True)
class RecipeOutput:
    """A variant's bytes plus the exact parameters (defaults filled in), the versions of the
    tools that shaped the bytes, and notes worth recording (calibration source, measured
    conversion error, …)."""

    model: bytes
    format: str
    params: Mapping[str, Any]
    tools: Mapping[str, str]
    notes: Mapping[str, Any] = field(default_factory=dict)


class Recipe(ABC):
    """Base class of every recipe. Subclasses set ``name`` and implement :meth:`apply`."""

    #: registry name, used in ``tinymlops.toml`` (``recipe = "quantize-static"``)
    name: ClassVar[str]
    #: one-line description for ``tinymlops recipe list``
    summary: ClassVar[str] = ""
    #: formats this recipe reads
    input_formats: ClassVar[tuple[str, ...]] = ("onnx",)
    #: parameter defaults; keys not listed here are rejected
    defaults: ClassVar[Mapping[str, Any]] = {}

    def resolve_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Fill defaults and reject unknown parameters (a :class:`ConfigError` naming them)."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"recipe '{self.name}': unknown parameter(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(self.defaults)) or 'none'}"
            )
        resolved = {**self.defaults, **params}
        self.check_params(resolved)
        return resolved

    def check_params(self, params: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Raise :class:`ConfigError` for parameter values out of range (override as needed)."""

    @abstractmethod
    def apply(self, ctx: RecipeContext, params: Mapping[str, Any]) -> RecipeOutput:
        """Derive the variant. Raise :class:`~tinymlops.errors.RecipeError` when it cannot."""


_RECIPES: dict[str, type[Recipe]] = {}


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator adding a recipe to the registry under ``cls.name``."""
    if cls.name in _RECIPES and _RECIPES[cls.name] is not cls:
        raise ConfigError(f"two recipes are named '{cls.name}'")
    _RECIPES[cls.name] = cls
    return cls


def get_recipe(name: str) -> Recipe:
    _load_builtin_recipes()
    try:
        return _RECIPES[name]()
    except KeyError:
        raise RecipeNotFoundError(
            f"unknown recipe '{name}'; known: {', '.join(sorted(_RECIPES))}", recipe=name
        ) from None


def available_recipes() -> dict[str, type[Recipe]]:
    _load_builtin_recipes()
    return dict(sorted(_RECIPES.items()))


def _load_builtin_recipes() -> None:
    # Importing the modules registers them; kept lazy so that `import tinymlops.optimize` is cheap.
    from tinymlops.optimize import recipes  # noqa: F401
