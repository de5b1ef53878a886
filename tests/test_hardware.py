"""Hardware and provenance as recorded conditions: CPU and kernel flags as the OS reports them, the ISA
oneDNN is capped at, and a git state that counts new files in the packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    assert hardware.check_isa("AVX2", flags) == "avx2" and hardware.isa_env("avx2", flags) == {}  # nothing to cap
    assert hardware.isa_env("avx", flags) == hardware.cap_env("avx")
    avx = hardware.cap_env("avx")
    assert avx[hardware.ISA_ENV] == "AVX" and avx[hardware.ATEN_ENV] == "default"
    with pytest.raises(Exception, match="above this CPU's"):
        hardware.check_isa("avx512_core_vnni", flags)


def test_an_avx2_machine_and_a_newer_one_capped_to_avx2_never_share_a_key():
    """The cap reproduces most of an older machine, not all: the key names the native ISA under a cap."""
    avx2 = hardware.hardware_key("AMD EPYC", "avx2", "avx2")
    capped = hardware.hardware_key("AMD EPYC", "avx2", "avx512_core_bf16")
    assert avx2 == "AMD EPYC | avx2" and capped == "AMD EPYC | avx512_core_bf16 capped to avx2"
    row = {"cpu": "AMD EPYC", "isa": "avx2", "isa_native": "avx512_core_bf16", "isa_effective": "avx2",
           "hardware_key": "AMD EPYC | avx2"}  # as written before the key named the cap
    assert hardware.row_hardware_key(row) == capped
    assert hardware.row_hardware_key({**row, "isa_native": "avx2"}) == avx2


REPORT = """
import json, numpy, torch, openvino as ov
from calib.core.hardware import dispatched, hardware, openvino_kernels
x = ov.opset13.parameter([1, 8, 8, 8], ov.Type.f32)
w = ov.opset13.constant(numpy.ones((8, 8, 3, 3), numpy.float32))
conv = ov.opset13.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])
compiled = ov.Core().compile_model(ov.Model([conv], [x]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
print(json.dumps({**dispatched(), "ov_kernels": openvino_kernels(compiled), **hardware()}))
"""


@pytest.mark.parametrize("isa", ["avx2", "avx512_core"])
def test_a_capped_process_dispatches_below_its_cap_in_every_library(isa):
    """The libraries' own reports, in a process started with `cap_env`: NumPy's SIMD targets, PyTorch's ATen
    capability and OpenVINO's CPU kernels all stay at or below the cap."""
    if isa not in hardware.supported_isas():
        pytest.skip(f"this CPU has no {isa}")
    env = {k: v for k, v in os.environ.items() if k not in hardware.CAP_ENVS} | hardware.cap_env(isa)
    run = subprocess.run([sys.executable, "-c", REPORT], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    above = {"avx2": ("X86_V4", "AVX512"), "avx512_core": ("AVX512_ICL", "AVX512_SPR")}[isa]
    assert not [t for t in got["numpy_simd"] if t.startswith(above)]
    assert got["torch_cpu_capability"] == {"avx2": "AVX2", "avx512_core": "AVX512"}[isa]
    assert got["isa"] == isa and got["cpu_caps"] == hardware.cap_env(isa)
    kernels = got["ov_kernels"]
    assert ("avx512" not in kernels) if isa == "avx2" else ("amx" not in kernels and "vnni" not in kernels), kernels
