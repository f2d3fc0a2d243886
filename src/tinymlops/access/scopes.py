"""API key scopes, in order: each includes the ones before it (``admin`` ⊇ ``release`` ⊇ ``read``)."""

from __future__ import annotations

from enum import StrEnum

from tinymlops.errors import UsageError


class Scope(StrEnum):
    READ = "read"
    RELEASE = "release"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _ORDER.index(self)

    def allows(self, required: Scope) -> bool:
        """Whether a key with this scope may do what needs ``required``."""
        return self.rank >= required.rank

    @classmethod
    def parse(cls, value: str) -> Scope:
        try:
            return cls(value)
        except ValueError:
            raise UsageError(f"unknown scope {value!r}; scopes: {', '.join(s.value for s in cls)}") from None


_ORDER = (Scope.READ, Scope.RELEASE, Scope.ADMIN)

__all__ = ["Scope"]
