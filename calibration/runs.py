"""Run folders, manifests and atomic writes: what every command leaves behind so a result can be trusted."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import calibration


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be read like any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def git_sha() -> str:
    try:
        root = Path(calibration.__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "calib": calibration.__version__}
    for pkg in ("torch", "torchvision", "openvino", "nncf", "onnxruntime", "numpy", "datumaro"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def provenance(seeds: dict[str, int] | None = None, inputs: dict[str, str] | None = None) -> dict:
    """Command, versions, git SHA, CPU, seeds and input hashes: the manifest fields of every run."""
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_sha": git_sha(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
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


def record(path: Path, kind: str, fields: dict, seeds: dict[str, int] | None = None,
           inputs: dict[str, str] | None = None) -> dict:
    """Append one flat row (`kind`, results, provenance) to a JSON-lines record file and return it."""
    prov = provenance(seeds, inputs)
    row = {"kind": kind, **fields, "command": prov["command"], "time": prov["time"], "git_sha": prov["git_sha"],
           "cpu": prov["cpu"], "cpu_count": prov["cpu_count"],
           **{f"version_{k}": v for k, v in prov["versions"].items()},
           **{f"seed_{k}": v for k, v in prov["seeds"].items()},
           **{f"input_{k}": v for k, v in prov["inputs"].items()}}
    append_jsonl(path, row)
    return row
