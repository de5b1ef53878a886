"""The machine a number was measured on: CPU model, the ISA features that change INT8/BF16 kernels, and the
instruction set oneDNN (OpenVINO's CPU plugin, PyTorch) is allowed to use.

INT8 results depend on the kernels: the same IR scores differently with AVX2 (u8s8 dot products that can
saturate) and with AVX-512 VNNI or AMX. `ONEDNN_MAX_CPU_ISA` in a process's environment caps oneDNN at an
older instruction set, so one machine can reproduce another's kernels; ONNX Runtime ignores it. A result
row carries `hardware_key`, and rows are compared only within one key.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# CPU flags (as /proc/cpuinfo spells them) that decide which INT8/BF16 kernels a library can pick
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")

# oneDNN's ISA names, oldest first, with the CPU flags each needs (oneDNN's `cpu_isa_t` values that
# ONEDNN_MAX_CPU_ISA accepts)
ISA_LEVELS: dict[str, tuple[str, ...]] = {
    "sse41": ("sse4_1",),
    "avx": ("avx",),
    "avx2": ("avx2",),
    "avx2_vnni": ("avx2", "avx_vnni"),
    "avx512_core": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "avx512_core_vnni": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"),
    "avx512_core_bf16": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"),
    "avx512_core_amx": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16", "amx_int8",
                        "amx_bf16"),
}
ISA_ENV = "ONEDNN_MAX_CPU_ISA"
NATIVE = "native"  # no cap: the best the CPU has


@functools.cache
def _cpuinfo(key: str) -> str | None:
    """The first `key : value` of Linux /proc/cpuinfo, or None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags; empty where unknown."""
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def supported_isas(flags: frozenset[str] | None = None) -> list[str]:
    """oneDNN ISA levels this CPU can run, oldest first."""
    flags = cpu_flags() if flags is None else flags
    return [isa for isa, need in ISA_LEVELS.items() if all(f in flags for f in need)]


def native_isa(flags: frozenset[str] | None = None) -> str:
    """The newest oneDNN ISA level this CPU runs (what oneDNN picks with no cap)."""
    levels = supported_isas(flags)
    return levels[-1] if levels else "unknown"


def effective_isa(env: dict[str, str] | None = None, flags: frozenset[str] | None = None) -> str:
    """The ISA oneDNN uses in a process with environment `env`: the cap if set and supported, else native."""
    env = os.environ if env is None else env
    cap = (env.get(ISA_ENV) or "").strip().lower()
    if not cap or cap in ("all", NATIVE):
        return native_isa(flags)
    levels = supported_isas(flags)
    if cap in levels:
        return cap
    return native_isa(flags)  # oneDNN ignores a cap above what the CPU has


def check_isa(isa: str, flags: frozenset[str] | None = None) -> str:
    """Normalize a requested ISA (`native` or a oneDNN level this CPU runs); one clear error otherwise."""
    from calib.core.errors import CalibError

    name = isa.strip().lower()
    if name == NATIVE:
        return NATIVE
    if name not in ISA_LEVELS:
        raise CalibError(f"unknown ISA {isa!r}; oneDNN levels: {', '.join(ISA_LEVELS)} (or native)")
    levels = supported_isas(flags)
    if name not in levels:
        raise CalibError(f"ISA {name} is above this CPU's ({native_isa(flags)}: {cpu_model()}); "
                         f"choose one of {', '.join([NATIVE, *levels])}")
    return name


def isa_env(isa: str) -> dict[str, str]:
    """The environment variables that make a process run `isa` (nothing for native)."""
    return {} if isa == NATIVE else {ISA_ENV: isa.upper()}


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """Whether 8-bit dot products have VNNI (AVX-512 VNNI, AVX-VNNI or AMX): without it, u8s8 kernels can
    saturate, which is why ONNX Runtime recommends `reduce_range` there."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def hardware(env: dict[str, str] | None = None) -> dict:
    """Flat fields for a manifest or a row: CPU, kernel-relevant flags, the ISA the engines run, and a key
    that says which rows may be compared."""
    flags = cpu_flags()
    isa = effective_isa(env)
    model = cpu_model()
    present = [f for f in KERNEL_FLAGS if f in flags]
    return {"cpu": model, "cpu_count": os.cpu_count(), "cpu_flags": present, "isa_native": native_isa(),
            "isa": isa, "onednn_max_cpu_isa": (env if env is not None else os.environ).get(ISA_ENV, ""),
            "hardware_key": hardware_key(model, isa)}


def hardware_key(cpu: str, isa: str) -> str:
    """Rows are comparable only within one key: the CPU model and the ISA oneDNN ran (the cap included)."""
    return f"{cpu} | {isa}"


# OpenVINO CPU layers whose kernel (and so whose INT8 arithmetic) follows the instruction set
KERNEL_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")


def openvino_kernels(model) -> str:
    """The kernels OpenVINO's CPU plugin picked for the compute layers of a model (an `.xml` path or a
    compiled model), from its runtime graph: e.g. "Convolution:jit_avx2_I8 x4, FullyConnected:jit_gemm_I8 x1".
    This is what the engine actually ran, so a cap that did not take effect shows here."""
    from collections import Counter

    if isinstance(model, str | Path):
        import openvino as ov

        model = ov.Core().compile_model(str(model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    counts: Counter[str] = Counter()
    for op in model.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else ""
        if layer in KERNEL_LAYERS:
            counts[f"{layer}:{info['primitiveType'].astype(str)}"] += 1
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))
