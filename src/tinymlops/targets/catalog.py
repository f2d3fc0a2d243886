"""The catalog of device profiles: the built-ins shipped with tinymlops plus a workspace's own.

Built-in profiles live in ``tinymlops/targets/profiles/*.toml``; a workspace adds or overrides
profiles with ``targets/*.toml`` files. A user profile with the name of a built-in replaces it.
Every profile file is one TOML table parsed by :meth:`DeviceProfile.from_dict`; any error names
the file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Iterator
from functools import lru_cache
from importlib import resources
from pathlib import Path

from tinymlops.errors import ConfigError, SpecError, TargetNotFoundError
from tinymlops.spec.profile import DeviceProfile

BUILTIN_PREFIX = "builtin:"


def parse_profile_text(text: str, source: str) -> DeviceProfile:
    """Parse one profile from TOML text; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}", file=source) from exc
    try:
        return DeviceProfile.from_dict(data, source=source)
    except SpecError as exc:
        if source not in exc.message:  # from_dict names the source; keep the guarantee anyway
            raise SpecError(f"{source}: {exc.message}", file=source) from exc
        exc.details.setdefault("file", source)
        raise


def load_profile_file(path: str | Path) -> DeviceProfile:
    """Load one profile file. Broken TOML or an unreadable file -> :class:`ConfigError`; a table
    that is not a valid profile -> :class:`SpecError`. Both name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read device profile: {exc}", file=str(path)) from exc
    return parse_profile_text(text, str(path))


@lru_cache(maxsize=1)
def _builtins() -> tuple[tuple[DeviceProfile, str], ...]:
    root = resources.files("tinymlops.targets").joinpath("profiles")
    out = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml"):
            continue
        source = f"{BUILTIN_PREFIX}{entry.name}"
        profile = parse_profile_text(entry.read_text(encoding="utf-8"), source)
        if profile.name != entry.name.removesuffix(".toml"):
            raise ConfigError(f"{source}: built-in profile is named {profile.name!r}, not after its file")
        out.append((profile, source))
    return tuple(out)


def builtin_profiles() -> dict[str, DeviceProfile]:
    """The profiles shipped with tinymlops, by name."""
    return {p.name: p for p, _ in _builtins()}


class TargetCatalog:
    """Device profiles by name: built-ins, overridden or extended by user profile files.

    ``user_dirs`` are directories of ``*.toml`` profiles (a missing directory is simply empty);
    later directories override earlier ones, and all override the built-ins. Two files in the same
    directory defining the same name are an error.
    """

    def __init__(self, user_dirs: Path | str | Iterable[Path | str] = (), *, builtins: bool = True) -> None:
        if isinstance(user_dirs, str | Path):
            user_dirs = [user_dirs]
        self._profiles: dict[str, DeviceProfile] = {}
        self._sources: dict[str, str] = {}
        if builtins:
            for profile, source in _builtins():
                self._profiles[profile.name] = profile
                self._sources[profile.name] = source
        for directory in user_dirs:
            self._load_dir(Path(directory))

    @classmethod
    def for_workspace(cls, root: Path | str) -> TargetCatalog:
        """Built-ins plus ``<root>/targets/*.toml``."""
        return cls([Path(root) / "targets"])

    def _load_dir(self, directory: Path) -> None:
        if not directory.exists():
            return
        if not directory.is_dir():
            raise ConfigError(f"{directory}: expected a directory of device profiles (*.toml)")
        seen: dict[str, Path] = {}
        for path in sorted(directory.glob("*.toml")):
            profile = load_profile_file(path)
            if profile.name in seen:
                raise ConfigError(
                    f"{path}: profile {profile.name!r} is already defined in {seen[profile.name]}",
                    file=str(path),
                )
            seen[profile.name] = path
            self._profiles[profile.name] = profile
            self._sources[profile.name] = str(path)

    def add(self, profile: DeviceProfile, source: str = "api") -> None:
        """Add or replace a profile programmatically."""
        self._profiles[profile.name] = profile
        self._sources[profile.name] = source

    def get(self, name: str) -> DeviceProfile:
        try:
            return self._profiles[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise TargetNotFoundError(f"no target named {name!r}; known targets: {known}", target=name) from None

    def source(self, name: str) -> str:
        """Where a profile came from: ``builtin:<file>``, a file path, or what :meth:`add` was told."""
        self.get(name)
        return self._sources[name]

    def is_builtin(self, name: str) -> bool:
        return self.source(name).startswith(BUILTIN_PREFIX)

    def names(self) -> list[str]:
        return sorted(self._profiles)

    def all(self) -> list[DeviceProfile]:
        return [self._profiles[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._profiles

    def __iter__(self) -> Iterator[DeviceProfile]:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self._profiles)


__all__ = ["TargetCatalog", "builtin_profiles", "load_profile_file", "parse_profile_text"]
