"""The exact recipe that produced a variant: recipe name, parameters and tool versions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinymlops.errors import SpecError
from tinymlops.spec._parse import check_version, get_str, reject_unknown

RECIPE_SPEC_MAJOR = 1


@dataclass(frozen=True)
class RecipeSpec:
    """``name`` is the configured step name (also the variant's name segment), ``recipe`` the
    plug-in that ran, ``params`` its full parameters (defaults filled in) and ``tools`` the
    versions of every library that shaped the output bytes."""

    name: str
    recipe: str
    params: Mapping[str, Any] = field(default_factory=dict)
    tools: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    spec_version: str = "1.0"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecipeSpec:
        doc = "recipe"
        reject_unknown(doc, data, {"spec_version", "name", "recipe", "params", "tools", "target"})
        check_version(doc, data, RECIPE_SPEC_MAJOR)
        params = data.get("params", {})
        tools = data.get("tools", {})
        if not isinstance(params, Mapping) or not isinstance(tools, Mapping):
            raise SpecError(f"{doc}: 'params' and 'tools' must be tables")
        target = data.get("target")
        return cls(
            spec_version=str(data["spec_version"]),
            name=get_str(doc, data, "name"),
            recipe=get_str(doc, data, "recipe"),
            params=dict(params),
            tools={str(k): str(v) for k, v in tools.items()},
            target=None if target is None else get_str(doc, data, "target"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "spec_version": self.spec_version,
            "name": self.name,
            "recipe": self.recipe,
            "params": dict(sorted(self.params.items())),
            "tools": dict(sorted(self.tools.items())),
        }
        if self.target is not None:
            out["target"] = self.target
        return out
