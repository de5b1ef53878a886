"""Run folders calib never clobbers.

- A default folder name carries every condition that changes the result: the main ones readable, the rest as a
  short digest of all options (`name_digest`).
- An existing folder is refused before any work; `overwrite=True` takes only a folder calib made (it holds
  calib's `manifest.json`) and replaces only the files calib wrote there (the manifest lists them under
  `written`); anything else in the folder stays as it was.
- A run that fails leaves nothing behind: a new folder is removed, an overwritten one gets its earlier files back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from calib.core.errors import OptionError
from calib.core.runs import atomic_write_json, staging_dir, to_jsonable

MANIFEST = "manifest.json"
WRITTEN = "written"  # manifest key: the files (relative paths) this run wrote
LOG = "calib.log"  # other libraries' output, kept by the CLI after the run


def name_digest(options: Any, length: int = 8) -> str:
    """A short, stable digest of options (any JSON-able object; key order does not matter)."""
    text = json.dumps(to_jsonable(options), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def claim(out: Path, overwrite: bool = False, option: str = "--out") -> None:
    """Refuse `out` before any work: a file, an existing folder without `overwrite`, or a folder calib did not
    make (no manifest.json)."""
    if out.exists() and not out.is_dir():
        raise OptionError(f"{option} {out} is a file; give a folder")
    if not out.exists():
        return
    if not overwrite:
        raise OptionError(f"{out} already exists; choose another {option}, or pass --overwrite to replace what "
                          "calib wrote there")
    if not (out / MANIFEST).is_file():
        raise OptionError(f"{out} was not made by calib (no {MANIFEST}); --overwrite replaces only calib's own "
                          "folders")


def claim_files(paths: list[Path], overwrite: bool = False, option: str = "--out") -> None:
    """Refuse output files before any work: a folder where a file goes, or a file that exists, without
    `overwrite` (the file-output side of `claim`)."""
    folders = [str(p) for p in paths if p.is_dir()]
    if folders:
        raise OptionError(f"{option} {folders[0]} is a folder; give a file name")
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise OptionError(f"{', '.join(existing)} already exists; choose another {option} or pass --overwrite")


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def calib_files(folder: Path) -> list[str]:
    """The files calib wrote into `folder`: the manifest's `written` list (only those that are there), or, for
    a folder from before that list, its manifest and options; and the libraries' log."""
    try:
        listed = json.loads((folder / MANIFEST).read_text()).get(WRITTEN)
    except (OSError, json.JSONDecodeError, AttributeError):
        listed = None
    names = [*(listed if isinstance(listed, list) else [MANIFEST, "options.json"]), LOG]
    return [n for n in names if (folder / n).is_file() and Path(n).parts and ".." not in Path(n).parts]


def _prune(folder: Path, keep: Path) -> None:
    """Remove empty folders under `folder` (never `keep` itself)."""
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if d != keep and not any(d.iterdir()):
            d.rmdir()


def _move(names: list[str], src: Path, dst: Path) -> None:
    for name in names:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(src / name, dst / name)


@contextmanager
def run_folder(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield `out` to write a run into (see the module docstring); on success the manifest (if the run wrote
    one) lists every file written, so that a later `--overwrite` knows what is calib's."""
    claim(out, overwrite)
    existed = out.exists()
    backup = None
    if existed:
        backup = staging_dir(out.parent, out.name)
        _move(calib_files(out), out, backup)
        _prune(out, out)
    else:
        out.mkdir(parents=True)
    before = _files(out)  # files calib did not write: never touched
    try:
        yield out
    except BaseException:
        for name in _files(out) - before:
            (out / name).unlink()
        if existed:
            _prune(out, out)
            _move(sorted(_files(backup)), backup, out)
        elif not before:
            shutil.rmtree(out, ignore_errors=True)
        raise
    else:
        written = sorted(_files(out) - before)
        manifest = out / MANIFEST
        if manifest.is_file():
            data = json.loads(manifest.read_text())
            data[WRITTEN] = sorted({*written, MANIFEST})
            atomic_write_json(manifest, data)
    finally:
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
