"""The machine a number was measured on: CPU model, the ISA features that change INT8/BF16 kernels, and the
instruction set every library on a cell's path is allowed to use.

INT8 results depend on the kernels: the same IR scores differently with AVX2 (u8s8 dot products that can
saturate) and with AVX-512 VNNI or AMX. oneDNN (OpenVINO's CPU plugin, PyTorch's convolutions) is not the only
library that dispatches by CPU: NumPy picks SIMD kernels, PyTorch's ATen picks vectorized kernels, MKL and
OpenBLAS pick GEMM kernels. A cap (`isa_env`) limits all of them in a process's environment, before any of them
loads, so one machine reproduces an older one's kernels; ONNX Runtime ignores every one of these caps. A result
row carries `hardware_key` (CPU, native ISA, and the cap where there is one), and rows are compared only within
one key.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Iterator
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


# Environment variables that cap what a library dispatches to, each read when the library loads
ATEN_ENV = "ATEN_CPU_CAPABILITY"  # PyTorch ATen's vectorized kernels: default, avx2, avx512
NUMPY_ENV = "NPY_DISABLE_CPU_FEATURES"  # NumPy's SIMD dispatch targets to switch off
MKL_ENV = "MKL_ENABLE_INSTRUCTIONS"  # MKL's GEMM code path (PyTorch's BLAS)
MKL_CBWR_ENV = "MKL_CBWR"  # MKL's conditional numerical reproducibility branch
OPENBLAS_ENV = "OPENBLAS_CORETYPE"  # OpenBLAS's kernels (NumPy's BLAS)
CAP_ENVS = (ISA_ENV, ATEN_ENV, NUMPY_ENV, MKL_ENV, MKL_CBWR_ENV, OPENBLAS_ENV)

# The oldest oneDNN level at which each NumPy dispatch target (NumPy 2.4 names and older ones) is allowed
_NUMPY_TARGETS = {"AVX": "avx", "F16C": "avx2", "FMA3": "avx2", "AVX2": "avx2", "X86_V3": "avx2",
                  "AVX512F": "avx512_core", "AVX512CD": "avx512_core", "AVX512_SKX": "avx512_core",
                  "X86_V4": "avx512_core", "AVX512_CLX": "avx512_core_vnni", "AVX512_CNL": "avx512_core_amx",
                  "AVX512_ICL": "avx512_core_amx", "AVX512_SPR": "avx512_core_amx", "AVX512FP16": "avx512_core_amx"}


def _rank(isa: str) -> int:
    return list(ISA_LEVELS).index(isa)


@functools.cache
def _numpy_dispatch_targets() -> tuple[str, ...]:
    """NumPy's dispatch targets (the features above its baseline that it may pick at run time)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__
    return tuple(__cpu_dispatch__)


def cap_env(isa: str) -> dict[str, str]:
    """Every library's cap for oneDNN level `isa`: oneDNN, ATen, NumPy's SIMD dispatch, MKL and OpenBLAS."""
    rank = _rank(isa)
    env = {ISA_ENV: isa.upper(),
           ATEN_ENV: "default" if rank < _rank("avx2") else "avx2" if rank < _rank("avx512_core") else "avx512"}
    off = [t for t in _numpy_dispatch_targets() if rank < _rank(_NUMPY_TARGETS.get(t, "avx512_core_amx"))]
    if off:
        env[NUMPY_ENV] = " ".join(off)
    mkl = {"sse41": "SSE4_2", "avx": "AVX", "avx2": "AVX2", "avx2_vnni": "AVX2", "avx512_core": "AVX512",
           "avx512_core_vnni": "AVX512_E1", "avx512_core_bf16": "AVX512_E1"}
    openblas = {"sse41": "Nehalem", "avx": "Sandybridge", "avx2": "Haswell", "avx2_vnni": "Haswell",
                "avx512_core": "SkylakeX", "avx512_core_vnni": "SkylakeX", "avx512_core_bf16": "Cooperlake"}
    if isa in mkl:  # and MKL's conditional numerical reproducibility on the same code path
        env[MKL_ENV] = env[MKL_CBWR_ENV] = mkl[isa]
    if isa in openblas:
        env[OPENBLAS_ENV] = openblas[isa]
    return env


def isa_env(isa: str, flags: frozenset[str] | None = None) -> dict[str, str]:
    """The environment that makes a process run `isa`: nothing for native or for a cap at or above the CPU's
    own level (nothing to limit there), else every library's cap (`cap_env`)."""
    native = native_isa(flags)
    if isa not in ISA_LEVELS or native not in ISA_LEVELS or _rank(isa) >= _rank(native):
        return {}
    return cap_env(isa)


@contextlib.contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    """This process's environment holds `variables` inside the block (processes started there inherit them from
    their first instruction), and is as it was after."""
    old = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def caps_of(env: dict[str, str] | None = None) -> dict[str, str]:
    """The cap variables set in `env` (this process's environment by default): what a row records."""
    env = os.environ if env is None else env
    return {k: env[k] for k in CAP_ENVS if env.get(k)}


def dispatched() -> dict:
    """What the libraries loaded in this process report they dispatch to: NumPy's SIMD targets in use and
    PyTorch's ATen capability (their own reports, so a cap that did not take effect shows here)."""
    import sys

    out: dict = {}
    if "numpy" in sys.modules:
        try:
            from numpy._core._multiarray_umath import __cpu_features__
        except ImportError:
            from numpy.core._multiarray_umath import __cpu_features__
        out["numpy_simd"] = [t for t in _numpy_dispatch_targets() if __cpu_features__.get(t)]
    if "torch" in sys.modules:
        import torch

        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return out


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """Whether 8-bit dot products have VNNI (AVX-512 VNNI, AVX-VNNI or AMX): without it, u8s8 kernels can
    saturate, which is why ONNX Runtime recommends `reduce_range` there."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def hardware(env: dict[str, str] | None = None) -> dict:
    """Flat fields for a manifest or a row: CPU, kernel-relevant flags, the ISA the engines run, every cap set,
    and a key that says which rows may be compared."""
    env = os.environ if env is None else env
    flags = cpu_flags()
    isa = effective_isa(env)
    model = cpu_model()
    present = [f for f in KERNEL_FLAGS if f in flags]
    return {"cpu": model, "cpu_count": os.cpu_count(), "cpu_flags": present, "isa_native": native_isa(),
            "isa": isa, "onednn_max_cpu_isa": env.get(ISA_ENV, ""), "cpu_caps": caps_of(env),
            "hardware_key": hardware_key(model, isa, native_isa())}


def hardware_key(cpu: str, isa: str, native: str | None = None) -> str:
    """Rows are comparable only within one key: the CPU model, the ISA the kernels ran, and where that is a cap
    below the CPU's own, the native ISA too ("AMD EPYC | avx512_core_bf16 capped to avx2"). An AVX2 machine and an
    AVX-512 machine capped to AVX2 get different keys: the cap reproduces most of the older machine, not all."""
    if native is None or native == isa:
        return f"{cpu} | {isa}"
    return f"{cpu} | {native} capped to {isa}"


def row_hardware_key(row: dict) -> str | None:
    """A row's key from its fields (`cpu`, `isa_native`, `isa_effective`), so rows written before the key named
    the cap get the key they would get now; None where the row has no CPU."""
    cpu = row.get("cpu")
    if not isinstance(cpu, str):
        return None
    isa = row.get("isa_effective") or row.get("isa")
    native = row.get("isa_native")
    if not isinstance(isa, str) or isa == NATIVE:
        isa = native
    return hardware_key(cpu, isa, native if isinstance(native, str) else None) if isinstance(isa, str) else None


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
