"""A named registry: the one shape of every extension point (quantizers, saliencies, runtimes, layer kinds, ...)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownEntryError(ValueError):
    """A name that the registry does not hold."""


class Registry(Generic[T]):
    """Entries of one kind, by name, in registration order.

    A new implementation is one file that defines it plus one ``register`` call; conformance suites
    iterate over :meth:`items`, so they pick every entry up.

    Args:
        kind: what the entries are, for messages (``"quantizer"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Adds ``entry`` under ``name`` and returns it.

        Raises:
            ValueError: when ``name`` is empty or already taken.
        """
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")`` registers the decorated class or function."""

        def wrap(entry: T) -> T:
            return self.register(name, entry)

        return wrap

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self._entries)
            raise UnknownEntryError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def get(self, name: str) -> T:
        """The entry named ``name``; :class:`UnknownEntryError` (a ``ValueError``) names the choices otherwise."""
        return self[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs, in registration order."""
        return list(self._entries.items())
