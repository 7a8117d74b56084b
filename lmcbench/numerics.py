"""Reproducible CPU numerics: the same bytes on any x86-64 machine with AVX2, whatever `--cores` says.

Training amplifies last-bit differences, and on the CPU those come from two sources (measured: a
smoke-sized ViT and GPT-2, 30 steps, on an AVX-512 machine; see tests/test_numerics.py):

* the instruction set each library picks at run time. Each of these changed the weights on its own:
  ATen's vectorised kernels (`ATEN_CPU_CAPABILITY`), oneDNN's convolutions (`ONEDNN_MAX_CPU_ISA`),
  MKL's GEMM (`MKL_CBWR`, conditional numerical reproducibility), and NumPy's SIMD loops
  (`NPY_DISABLE_CPU_FEATURES`; its AVX-512 `power` changes the ACE N-body data).
  `MKL_ENABLE_INSTRUCTIONS=AVX2` and `OPENBLAS_CORETYPE=Haswell` changed nothing once these are set.
* the number of intra-op threads (reductions and GEMM split their work by thread count).

Mode `pinned` (the default of the CPU profiles) caps all four at AVX2, which every x86-64 CPU of
the last decade has, and fixes the intra-op threads of every job (`numerics.threads`) independently
of `--cores` and rule threads. Mode `fast` leaves dispatch to the libraries and threads to the rule.
Every variable is read once when its library initialises, so :func:`apply` must run before torch
and numpy are imported: first thing in each workflow/scripts shim, the CLI and tests/conftest.py.
GPU kernels and non-x86 CPUs are not pinned, and MKL documents its AVX2 reproducibility branch for Intel
CPUs only (on AMD it falls back to its automatic branch): README "Same numbers on any machine".
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path

MODES = ("pinned", "fast")
DEFAULTS = {"mode": "pinned", "threads": 1}
PINNED_LEVEL = "AVX2"   # what torch.backends.cpu.get_cpu_capability() reports when pinned


def numpy_above_avx2() -> str:
    """NumPy's x86 dispatch targets above AVX2, read from its version without importing it (naming a target
    it does not dispatch is an ImportWarning): up to 2.3 one per extension (AVX512_SPR stays on when AVX512F
    is off), from 2.4 one per x86-64 level (X86_V4 = AVX-512). Read off 1.26.4, 2.0.2, 2.3.5, 2.4.0 and 2.5.2
    (the last is the GPU machines' image's)."""
    major, minor = (int(part) for part in importlib.metadata.version("numpy").split(".")[:2])
    if (major, minor) >= (2, 4):
        return "X86_V4 AVX512_ICL AVX512_SPR"
    per_extension = "AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL"
    return per_extension + " AVX512_SPR" if major >= 2 else per_extension


PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": numpy_above_avx2(),
    "NUMBA_CPU_NAME": "haswell",   # numba's code generation (the fused L1 kernel reassociates sums by vector width)
}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Other dispatch caps a user may set; pinned mode does not need them (measured), provenance records them.
OTHER_DISPATCH_ENV = ("MKL_ENABLE_INSTRUCTIONS", "OPENBLAS_CORETYPE")
MARKER = "LMCBENCH_NUMERICS"   # "pinned:<threads>" or "fast": read by job_threads and by child processes

# /proc/cpuinfo flags that decide which kernels the libraries may pick; provenance records them.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512dq", "avx512cd", "avx512bw",
             "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
             "asimd", "sve", "sve2")


def cpu_info() -> dict:
    """CPU model, architecture and the ISA flags among ISA_FLAGS that it has (Linux /proc/cpuinfo)."""
    model, flags = platform.processor() or "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("unknown", "", platform.machine()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    return {"model": model, "machine": platform.machine(), "isa_flags": [f for f in ISA_FLAGS if f in flags]}


def _pinnable(cpu: dict) -> bool:
    """Dispatch can be capped at AVX2 on x86-64 CPUs that have it (flags unknown: assume so)."""
    if cpu["machine"].lower() not in ("x86_64", "amd64"):
        return False
    return not Path("/proc/cpuinfo").exists() or {"avx2", "fma"} <= set(cpu["isa_flags"])


def resolve(cfg: dict | None = None) -> dict:
    """A profile's `numerics` block over DEFAULTS, checked."""
    merged = {**DEFAULTS, **(cfg or {})}
    if merged["mode"] not in MODES:
        raise ValueError(f"config error: numerics.mode = {merged['mode']!r}; use one of {MODES}")
    if not isinstance(merged["threads"], int) or merged["threads"] < 1:
        raise ValueError(f"config error: numerics.threads = {merged['threads']!r}; use a positive integer")
    return merged


def apply(cfg: dict | None = None) -> dict:
    """Set the environment of mode `cfg["mode"]` for this process and its children; returns :func:`state`.

    Must run before torch and numpy are imported; if one already is with other kernels, raises."""
    cfg = resolve(cfg)
    if cfg["mode"] == "fast":
        if os.environ.get(MARKER, "").startswith("pinned"):   # undo an inherited pinned mode, keep a user's own vars
            for key, value in PINNED_ENV.items():
                if os.environ.get(key) == value:
                    del os.environ[key]
        os.environ[MARKER] = "fast"
        return state()
    threads = str(cfg["threads"])
    os.environ.update({key: threads for key in THREAD_ENV})
    os.environ[MARKER] = f"pinned:{threads}"
    if _pinnable(cpu_info()):
        os.environ.update(PINNED_ENV)
        _check_loaded()
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(cfg["threads"])
    return state()


def _check_loaded() -> None:
    """Fail loudly if torch or numpy started before apply() with kernels above AVX2."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.backends.cpu.get_cpu_capability() not in (PINNED_LEVEL, "DEFAULT"):
        raise RuntimeError(
            f"numerics: torch was imported before lmcbench.numerics.apply() and dispatches "
            f"{torch.backends.cpu.get_cpu_capability()} kernels; call apply() before the first `import torch` "
            "(or set numerics.mode: fast)")
    if _numpy_avx512(_numpy_features()):
        raise RuntimeError("numerics: numpy was imported before lmcbench.numerics.apply() with AVX-512 loops; "
                           "call apply() before the first `import numpy` (or set numerics.mode: fast)")


def _numpy_features() -> dict:
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return {}
    core = getattr(numpy, "_core", None) or numpy.core
    return dict(core._multiarray_umath.__cpu_features__)


def _numpy_avx512(features: dict) -> bool | None:
    """Whether NumPy dispatches AVX-512 loops (None: not imported): X86_V4 from NumPy 2.4, AVX512F before."""
    if not features:
        return None
    return features["X86_V4"] if "X86_V4" in features else features.get("AVX512F")


def job_threads(requested: int | None) -> int | None:
    """Intra-op threads for a job: the pinned count in pinned mode, else what the rule or user asked for."""
    mode, _, threads = os.environ.get(MARKER, "").partition(":")
    return int(threads) if mode == "pinned" else requested


def state() -> dict:
    """The effective numerics of this process, for provenance: mode, threads, kernel dispatch, CPU."""
    mode, _, threads = os.environ.get(MARKER, "fast").partition(":")
    torch = sys.modules.get("torch")
    return {
        "mode": mode,
        "threads": torch.get_num_threads() if torch is not None else int(threads or 0) or None,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability() if torch is not None else None,
        "numpy_avx512": _numpy_avx512(_numpy_features()),
        "env": {key: os.environ[key] for key in (*PINNED_ENV, *OTHER_DISPATCH_ENV, *THREAD_ENV)
                if key in os.environ},
        "cpu": cpu_info(),
    }
