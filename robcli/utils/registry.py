"""One registry mechanism for every named thing robcli offers (data sets, models, losses, attacks, selectors,
certification methods), in timm's shape: a decorator registers, public ``names()`` / ``get()`` read, and the
registry fills itself by importing the modules that define its members the first time it is read.

The member modules are named as strings and imported with :mod:`importlib`, so a registry module never imports
its members statically (no import circle: the members import the registry, not the other way round).
:mod:`robcli.names` keeps a torch-free copy of every registry's names for ``--help`` and shell completion; a
test checks that the two agree.
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

from robcli.errors import RobcliError, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered member: its name, the object, a one-line description and free-form metadata."""

    name: str
    obj: T
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Named members of one kind.

    Args:
        kind: what the members are, for messages (``"data set"``, ``"attack"``).
        modules: modules that register members when imported (imported on first read, in order).
        error: the typed error raised for an unknown name.
        normalize: maps a user's spelling to the registered name (e.g. ``str.lower``).
    """

    def __init__(self, kind: str, modules: Sequence[str] = (), *, error: type[RobcliError] = UsageError,
                 normalize: Callable[[str], str] | None = None):
        self.kind = kind
        self._modules = tuple(modules)
        self._error = error
        self._normalize = normalize
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = False
        self._loading = False

    # ---- filling --------------------------------------------------------------------------------------------

    def register(self, name: str, description: str = "", *, aliases: Sequence[str] = (), **meta) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name", "what it is", key=value)`` registers the decorated object."""

        def deco(obj: T) -> T:
            self.add(name, obj, description, aliases=aliases, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, description: str = "", *, aliases: Sequence[str] = (), **meta) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = Entry(name, obj, description, dict(meta))
        for a in aliases:
            self._aliases[a] = name

    def _load(self) -> None:
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            for m in self._modules:
                importlib.import_module(m)
        finally:
            self._loading = False
        self._loaded = True

    # ---- reading ---------------------------------------------------------------------------------------------

    def resolve(self, name: str) -> str | None:
        """The registered name a user's spelling (or an alias) stands for, or ``None``."""
        self._load()
        key = str(name).strip()
        if self._normalize is not None:
            key = self._normalize(key)
        key = self._aliases.get(key, key)
        return key if key in self._entries else None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.resolve(name) is not None

    def get(self, name: str) -> Entry[T]:
        """The entry of ``name`` (aliases and the registry's spelling rule apply).

        Raises:
            RobcliError: the registry's error type, naming the choices, for an unknown name.
        """
        key = self.resolve(name)
        if key is None:
            raise self._error(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}")
        return self._entries[key]

    def names(self, pattern: str = "*", **meta) -> list[str]:
        """Registered names matching ``pattern`` (fnmatch) and every ``meta`` key given (sorted)."""
        self._load()
        return sorted(n for n, e in self._entries.items()
                      if fnmatch.fnmatch(n, pattern) and all(e.meta.get(k) == v for k, v in meta.items()))

    def entries(self) -> Iterator[Entry[T]]:
        self._load()
        return iter(self._entries[n] for n in sorted(self._entries))


__all__ = ["Entry", "Registry"]
