"""Choices that come from the library's registries (sources, engines) or from heavy modules (`RankBy`), offered to
typer as Enum classes whose members are looked up on first use.

typer reads an Enum's members only when it parses that option or prints that command's help, so
`calib --help` and `calib <group> --help` never import a registry (the sources one loads torch); the choices
stay exactly the registries' own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from enum import Enum, EnumMeta

_LOADERS: dict[type, Callable[[], type[Enum]]] = {}


class _Deferred(EnumMeta):
    """An Enum class that stands for another, built on first use: iterating it (all typer does with a choice
    annotation) gives the other's members, which are what a command receives."""

    def _target(cls) -> type[Enum]:
        return _LOADERS[cls]()

    def __iter__(cls):
        return iter(cls._target())

    def __len__(cls):
        return len(cls._target())

    def __contains__(cls, value):
        return value in cls._target()

    def __getitem__(cls, name):
        return cls._target()[name]

    def __call__(cls, value, *args, **kwargs):
        return cls._target()(value, *args, **kwargs)

    @property
    def __members__(cls):
        return cls._target().__members__


def deferred_choices(name: str, load: Callable[[], Iterable[str] | type[Enum]]) -> type[Enum]:
    """An Enum named `name` whose members are `load()`'s: an Enum class as it is, or names (each its own value)."""

    def target() -> type[Enum]:
        found = load()
        return found if isinstance(found, type) else Enum(name, {n: n for n in found}, type=str)

    cls = _Deferred(name, (Enum,), _Deferred.__prepare__(name, (Enum,)))
    cls.__module__ = __name__
    _LOADERS[cls] = functools.cache(target)
    return cls


def _sources() -> list[str]:
    from calib.core.sources import list_sources

    return list_sources()


def _inversion_inits() -> tuple[str, ...]:
    from calib.core.sources.inversion import INITS

    return INITS


def _engines() -> list[str]:
    from calib.core.engines import list_engines

    return list_engines()


def _int8_engines() -> list[str]:
    from calib.core.engines import get_engine, list_engines

    return [n for n in list_engines() if get_engine(n).int8]


def _rank_by() -> type[Enum]:
    from calib.core.diagnose import RankBy

    return RankBy


Source = deferred_choices("Source", _sources)
InversionInit = deferred_choices("InversionInit", _inversion_inits)
Engine = deferred_choices("Engine", _engines)
QuantEngine = deferred_choices("QuantEngine", _int8_engines)
RankBy = deferred_choices("RankBy", _rank_by)  # members: calib.core.diagnose.RankBy's own
