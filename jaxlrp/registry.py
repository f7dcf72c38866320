"""A small named registry: one per extension point (CAM methods, explainers, metrics).

Every other table (the CLI's choice lists, panel titles, ``evaluate``'s metric names,
the hybrid's ``cam=`` choices) is derived from a registry, so that adding an entry is
one decorator or one :meth:`Registry.add` call in one file.

Entries are looked up by name or alias, case-insensitively. Unknown names raise
:class:`jaxlrp.errors.ExplanationError` naming the argument and listing the choices.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from jaxlrp.errors import ExplanationError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by canonical name, with aliases.

    Args:
      kind: what the entries are, used in messages (``"CAM method"``).
      arg: the argument name used in error messages (``"cam"``, ``"metrics"``).
    """

    def __init__(self, kind: str, arg: str):
        self.kind = kind
        self.arg = arg
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}  # lower-case name or alias -> canonical name

    def add(self, name: str, entry: T, aliases: tuple[str, ...] = ()) -> T:
        """Register ``entry`` under ``name`` (and ``aliases``); returns ``entry``.

        Raises ExplanationError when the name or an alias is already taken.
        """
        if not isinstance(name, str) or not name:
            raise ExplanationError(f"name: expected a non-empty string, got {name!r}")
        keys = [name.lower(), *(a.lower() for a in aliases)]
        taken = [k for k in keys if k in self._aliases]
        if taken or len(set(keys)) != len(keys):
            raise ExplanationError(
                f"name: the {self.kind} name(s) {taken or keys} are already registered; "
                f"unregister them first"
            )
        self._entries[name] = entry
        for k in keys:
            self._aliases[k] = name
        return entry

    def remove(self, name: str) -> T:
        """Unregister the entry called ``name`` (or one of its aliases); returns it."""
        canonical = self.canonical(name)
        for k in [k for k, v in self._aliases.items() if v == canonical]:
            del self._aliases[k]
        return self._entries.pop(canonical)

    def canonical(self, name: Any) -> str:
        """The canonical name of ``name`` (a name or alias, any case)."""
        if isinstance(name, str) and name.lower() in self._aliases:
            return self._aliases[name.lower()]
        raise ExplanationError(
            f"{self.arg}: unknown {self.kind} {name!r}; expected one of {list(self.choices())}"
        )

    def get(self, name: Any) -> T:
        """The entry called ``name`` (a name or alias, any case)."""
        return self._entries[self.canonical(name)]

    def names(self) -> tuple[str, ...]:
        """Canonical names, in registration order."""
        return tuple(self._entries)

    def choices(self) -> tuple[str, ...]:
        """Canonical names, then the aliases (lower case) that differ from them."""
        names = self.names()
        extra = [k for k in self._aliases if k not in {n.lower() for n in names}]
        return (*names, *extra)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._aliases

    def __iter__(self) -> Iterator[T]:
        return iter(tuple(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
