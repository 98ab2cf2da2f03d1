"""Registries: the one place where a name becomes a part.

A :class:`Registry` maps names (``--vision_model videomae``, ``--fusion mamba2``, ``--dataset ucf101`` ...) to what
they build, with per-name metadata (what a part supports, its defaults). CLI choices, "did you mean" and the
checks of a name all come from the registry that owns it, so a name is written down once.

A target is either the object itself (a function or class, e.g. a toy part registered from a test) or a lazy
``"package.module:attribute"`` path, imported on first use: the registries the command line reads (``--help``,
choices) can then be imported without importing torch, as ``transformers``' auto classes map names to classes
lazily. ``tests/test_layers.py`` reads those paths as imports, so the layering rules cover them too.

    BACKBONES = Registry("vision backbone", flag="vision_model")
    BACKBONES.add("videomae", "videolab.models.backbones:build_videomae", kind="video")
    builder = BACKBONES.get("videomae")               # imports videolab.models.backbones
    BACKBONES.get("videomea")   # UsageError: --vision_model 'videomea' is not valid; did you mean 'videomae'? ...
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

from videolab.core.errors import UsageError


def nearest(name: Any, candidates: Sequence[str]) -> str:
    """'; did you mean 'x'?' for a near miss among ``candidates``, else ''."""
    match = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def import_module(name: str) -> Any:
    """``importlib.import_module``; a name starting with ``.`` is a module beside this one (the flat copy of the
    package in an export folder names its modules so: ``videolab.export.remote_code``)."""
    return importlib.import_module(name, package=__package__ if name.startswith(".") else None)


def load_target(path: str) -> Any:
    """``"package.module:attribute"`` -> the attribute (the module is imported)."""
    module_name, _, attribute = path.partition(":")
    return getattr(import_module(module_name), attribute)


@dataclass
class Entry:
    """One registered name: its target (loaded on first use when it is a path) and its metadata."""
    name: str
    target: Any
    meta: dict = field(default_factory=dict)

    def load(self) -> Any:
        if isinstance(self.target, str):
            self.target = load_target(self.target)
        return self.target


class Registry:
    """Names -> parts, in registration order. ``what`` names the kind of part in messages; ``flag`` is the setting
    whose values these names are (messages then say ``--flag 'value'``)."""

    def __init__(self, what: str, flag: Optional[str] = None):
        self.what, self.flag = what, flag
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, target: Any = None, **meta) -> Any:
        """Register ``name``; ``target`` is the part or a lazy ``"module:attribute"`` path (None for a name that
        only carries metadata). Registering a name twice is a bug, not a usage error."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = Entry(name, target, dict(meta))
        return target

    def register(self, name: str, **meta) -> Callable[[Any], Any]:
        """Decorator form of :meth:`add`."""
        return lambda target: self.add(name, target, **meta)

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    @contextlib.contextmanager
    def temporarily(self, name: str, target: Any = None, **meta) -> Iterator[Any]:
        """Register ``name`` for the block only (tests register toy parts this way)."""
        self.add(name, target, **meta)
        try:
            yield target
        finally:
            self.remove(name)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def unknown(self, name: Any, extra: str = "") -> UsageError:
        """The error for a name that is not registered: the near miss and every valid name."""
        what = f"--{self.flag} {name!r} is not valid" if self.flag else f"unknown {self.what} {name!r}"
        return UsageError(f"{what}{nearest(name, self.names())}; choose one of: {', '.join(self.names())}{extra}")

    def check(self, name: Any) -> None:
        if name not in self:
            raise self.unknown(name)

    def entry(self, name: Any) -> Entry:
        self.check(name)
        return self._entries[name]

    def get(self, name: Any) -> Any:
        """The part registered as ``name`` (imported on first use)."""
        return self.entry(name).load()

    def meta(self, name: Any) -> dict:
        return self.entry(name).meta

    def where(self, **wanted) -> list[str]:
        """Names whose metadata holds every ``key=value`` of ``wanted``."""
        return [n for n, e in self._entries.items() if all(e.meta.get(k) == v for k, v in wanted.items())]


class Choices:
    """The values one metadata key takes over a registry's entries, as a set of choices (e.g. the ``--task`` value
    that selects each task): ``names()``, ``in``, ``check()`` like a registry, always up to date with it."""

    def __init__(self, registry: Registry, key: str, flag: Optional[str] = None):
        self.registry, self.key, self.flag = registry, key, flag

    def names(self) -> list[str]:
        return list(dict.fromkeys(self.registry.meta(n)[self.key] for n in self.registry))

    def __contains__(self, value: object) -> bool:
        return value in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def check(self, value: Any) -> None:
        if value not in self:
            what = f"--{self.flag} {value!r} is not valid" if self.flag else f"unknown {self.key} {value!r}"
            raise UsageError(f"{what}{nearest(value, self.names())}; choose one of: {', '.join(self.names())}")
