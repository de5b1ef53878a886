"""Where things live: every location is an option first, then an environment variable, then a default."""

from __future__ import annotations

import os
from pathlib import Path


def calib_home() -> Path:
    """Cache root for downloads and generated sets (`CALIB_HOME`, default `~/.cache/calib`)."""
    return Path(os.environ.get("CALIB_HOME", Path.home() / ".cache" / "calib")).expanduser()


def env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None
