"""The engine registry: one `@register_engine` per engine module, looked up by name or by a file's suffix.

It imports no engine and nothing heavy, so that `calib.core.spec` and `calib.core.contract` can name engines
without importing them; the engines register themselves when `calib.core.engines` loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from calib.core.errors import CalibError

if TYPE_CHECKING:
    from calib.core.engines import Engine

_ENGINES: dict[str, Engine] = {}


def _loaded() -> dict[str, Engine]:
    """The registered engines, loading the engine modules on first use (importing the package registers them)."""
    if not _ENGINES:
        import calib.core.engines  # noqa: F401 - its engine modules register on import
    return _ENGINES


def register_engine(cls: type[Engine]) -> type[Engine]:
    """Register an engine class under its `name` (one instance, stateless)."""
    _ENGINES[cls.name] = cls()
    return cls


def list_engines(int8: bool | None = None) -> list[str]:
    """Registered engine names; `int8=True` only those that quantize, False only FP32 baselines."""
    return [n for n, e in _loaded().items() if int8 is None or e.int8 == int8]


def get_engine(name: str) -> Engine:
    try:
        return _loaded()[name]
    except KeyError:
        raise CalibError(f"unknown engine {name!r}; known engines: {', '.join(_ENGINES)}") from None


def engine_for_file(path: str | Path) -> Engine:
    """The engine that reads a model file, by its suffix."""
    for engine in _loaded().values():
        if engine.owns(path):
            return engine
    known = ", ".join(f"{e.suffix} ({e.name})" for e in _ENGINES.values())
    raise CalibError(f"no engine reads {path}; model files are {known}")
