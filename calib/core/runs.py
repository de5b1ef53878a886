"""Run folders, manifests and atomic writes: what every command leaves behind so a result can be trusted."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import calib
from calib.core import hardware


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to (by any library: `np.savez`, `torch.save`, PIL), renamed onto
    `path` when the block ends without error and removed when it fails: readers never see half a file. The one
    atomic write of calib; the name keeps `path`'s suffix, since some writers append theirs otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be read like any file
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (`atomic_path`), flushed to disk."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def staging_dir(parent: Path, name: str) -> Path:
    """A fresh folder in `parent` to build `name` in before renaming it into place, with the permissions a
    plain mkdir gives (mkdtemp makes 0700, which the rename would keep)."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)
    return path


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "value") and hasattr(obj, "name"):  # enums
        return obj.value
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=1, sort_keys=False) + "\n").encode())


def append_jsonl(path: Path, row: dict) -> None:
    """Append one row as a single write of one line (O_APPEND), then fsync: a kill loses no earlier row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(to_jsonable(row)) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file; a torn last line (a kill mid-write) is ignored."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


PACKAGES = ("calib",)  # untracked files here change what runs


def git_state(root: Path | None = None) -> dict:
    """`git_sha` (HEAD, with "-dirty" appended when the tree differs from it) and `dirty`: a tracked file
    changed anywhere, or an untracked, not ignored file under one of the package folders (a new module runs
    as much as a changed one)."""
    root = root or Path(calib.__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return {"git_sha": "unknown", "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=root,
                                capture_output=True, text=True, timeout=5).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": "unknown", "dirty": None}
    dirty = any(not line.startswith("??") or line[3:].strip('"').startswith(tuple(f"{p}/" for p in PACKAGES))
                for line in status if line.strip())
    return {"git_sha": head.stdout.strip() + ("-dirty" if dirty else ""), "dirty": dirty}


def git_sha(root: Path | None = None) -> str:
    return git_state(root)["git_sha"]




def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "calib": calib.__version__}
    for pkg in ("torch", "torchvision", "openvino", "nncf", "onnxruntime", "numpy", "datumaro"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_sha256(path: Path) -> str:
    """A file's sha256, the one file hash of calib; hashed once per process unless the file changes."""
    st = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


# Parts of the package that present results but compute none: editing them reruns no study cell.
PRESENTATION = ("cli/", "study/report.py", "study/html.py", "study/plot.py", "study/blocks.py", "study/compare.py",
                "study/check.py", "study/schedule.py", "study/dropfit.py", "study/templates/", "core/progress.py",
                "core/show.py",
                "core/drop_fit.json")  # a fit of recorded signals: rows name it (`drop_fit`) and keep the signals


@functools.cache
def code_fingerprint() -> str:
    """16 hex digits of sha256 over the package files that compute a result (every module, shipped checkpoint
    and table of `calib`, but `PRESENTATION`): a study cell's condition holds it, so a row says which code made
    it, and a resumed run redoes the cells whose code changed. Git's state is recorded too, but a tree can be
    dirty in ways that change nothing, and an installed copy has no git at all."""
    root = Path(calib.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc" or rel.startswith(PRESENTATION):
            continue
        h.update(f"{rel}\0{file_sha256(path)}\n".encode())
    return h.hexdigest()[:16]


def provenance(seeds: dict[str, int] | None = None, inputs: dict[str, str] | None = None) -> dict:
    """Command, versions, git SHA (and whether the tree was dirty), hardware (CPU, kernel-relevant flags, the
    ISA oneDNN runs, `hardware_key`), seeds and input hashes: the manifest fields of every run."""
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **git_state(),
        "code_fingerprint": code_fingerprint(),
        **hardware.hardware(),
        "versions": versions(),
        "seeds": seeds or {},
        "inputs": inputs or {},
    }


def start_run(out_dir: Path, options: Any, seeds: dict[str, int] | None = None,
              inputs: dict[str, str] | None = None) -> Path:
    """Create the run folder and save its options and manifest before any work happens."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "options.json", options)
    atomic_write_json(out_dir / "manifest.json", provenance(seeds, inputs))
    return out_dir


HARDWARE_FIELDS = ("cpu", "cpu_count", "cpu_flags", "isa_native", "isa", "onednn_max_cpu_isa", "cpu_caps",
                   "hardware_key")


def record(path: Path, kind: str, fields: dict, seeds: dict[str, int] | None = None,
           inputs: dict[str, str] | None = None) -> dict:
    """Append one flat row (`kind`, results, provenance) to a JSON-lines record file and return it."""
    prov = provenance(seeds, inputs)
    row = {"kind": kind, **fields, **{k: prov[k] for k in ("command", "time", "git_sha", "dirty", "code_fingerprint",
                                                            *HARDWARE_FIELDS)},
           **{f"version_{k}": v for k, v in prov["versions"].items()},
           **{f"seed_{k}": v for k, v in prov["seeds"].items()},
           **{f"input_{k}": v for k, v in prov["inputs"].items()}, **hardware.dispatched()}
    append_jsonl(path, row)
    return row


def predictions_to_str(preds: np.ndarray) -> str:
    """Per-image classes (0-9) as one digit per image, test-split order: compact enough for a JSON row."""
    preds = np.asarray(preds)
    if len(preds) and (preds.min() < 0 or preds.max() > 9):
        raise ValueError("predictions must be classes 0-9")
    return "".join(map(str, preds.tolist()))


def predictions_from_str(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("ascii"), np.uint8).astype(np.int64) - ord("0")
