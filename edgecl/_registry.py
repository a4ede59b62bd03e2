"""A small registry by name, shared by strategies, backbones and codecs (timm-style)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from edgecl.errors import UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """One registered implementation: its name, a one-line summary and the factory."""

    name: str
    summary: str
    factory: Callable[..., T]


class Registry(Generic[T]):
    """Maps names to factories; unknown names raise a UsageError listing the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, RegistryEntry[T]] = {}

    def register(
        self, name: str, *, summary: str = ""
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                warnings.warn(f"{self.kind} {name!r} registered twice; the later one wins",
                              stacklevel=2)
            doc = (factory.__doc__ or "").strip().splitlines()
            self._entries[name] = RegistryEntry(name, summary or (doc[0] if doc else ""), factory)
            return factory

        return decorator

    def get(self, name: str) -> RegistryEntry[T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise UsageError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def create(self, name: str, /, **options: object) -> T:
        return self.get(name).factory(**options)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[RegistryEntry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries
