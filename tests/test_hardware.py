"""Hardware and provenance as recorded conditions: CPU and kernel flags as the OS reports them, the ISA
oneDNN is capped at, and a git state that counts new files in the packages."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from calib.core import hardware
from calib.core.runs import git_state, provenance, read_jsonl, record


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True,
                   capture_output=True)


def test_git_state_counts_untracked_files_in_the_packages_as_dirty(tmp_path):
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "a.py").write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("*.pyc\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "c")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_state(tmp_path) == {"git_sha": head, "dirty": False}
    (tmp_path / "notes.txt").write_text("outside the packages\n")
    (tmp_path / "calib" / "cache.pyc").write_bytes(b"ignored")
    assert git_state(tmp_path)["dirty"] is False  # untracked outside the packages, or ignored: clean
    (tmp_path / "calib" / "new").mkdir()
    (tmp_path / "calib" / "new" / "b.py").write_text("y = 2\n")  # a new module runs as much as a changed one
    assert git_state(tmp_path) == {"git_sha": head + "-dirty", "dirty": True}
    (tmp_path / "calib" / "new" / "b.py").unlink()
    (tmp_path / "calib" / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True


def test_manifests_and_records_carry_the_hardware_as_the_os_reports_it(tmp_path):
    info = Path("/proc/cpuinfo")
    if not info.exists():
        pytest.skip("no /proc/cpuinfo here")
    lines = info.read_text().splitlines()
    model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    flags = set(next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags")))
    prov = provenance()
    assert prov["cpu"] == model and set(prov["cpu_flags"]) == flags & set(hardware.KERNEL_FLAGS)
    assert prov["hardware_key"] == f"{model} | {prov['isa']}" and prov["isa"] == prov["isa_native"]
    assert isinstance(prov["dirty"], bool) and prov["git_sha"].endswith("-dirty") == prov["dirty"]
    assert {"openvino", "nncf", "onnxruntime", "torch"} <= set(prov["versions"])
    row = record(tmp_path / "r.jsonl", "test", {"x": 1})
    assert read_jsonl(tmp_path / "r.jsonl") == [row]
    for key in ("cpu", "cpu_flags", "isa_native", "isa", "hardware_key", "git_sha", "dirty", "version_openvino"):
        assert row[key] == (prov[key] if key in prov else prov["versions"]["openvino"])


def test_an_isa_cap_changes_the_recorded_key_only_up_to_the_cpu():
    flags = frozenset({"sse4_1", "avx", "avx2"})
    assert hardware.supported_isas(flags) == ["sse41", "avx", "avx2"] and hardware.native_isa(flags) == "avx2"
    assert hardware.effective_isa({hardware.ISA_ENV: "AVX"}, flags) == "avx"
    assert hardware.effective_isa({hardware.ISA_ENV: "AVX512_CORE_AMX"}, flags) == "avx2"  # oneDNN ignores it
    assert hardware.check_isa("AVX2", flags) == "avx2" and hardware.isa_env("avx2") == {hardware.ISA_ENV: "AVX2"}
    with pytest.raises(Exception, match="above this CPU's"):
        hardware.check_isa("avx512_core_vnni", flags)
