"""What this CPU does fast (one place decides where bfloat16 pays: embedders and MLP heads both ask it), and the one
thread policy of fits and evaluations (fit_threads, $EMBRM_THREADS)."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os

from embrm.core._errors import EmbrmError


@functools.lru_cache(maxsize=1)
def cpuinfo() -> dict:
    """The first CPU's /proc/cpuinfo fields (empty where unreadable)."""
    out = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def cpu_flags() -> frozenset:
    return frozenset(cpuinfo().get("flags", "").split())


def fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices clearly faster than float32: AMX (Intel amx_bf16), or
    AVX512-BF16 on AMD (Zen 4 and later: VDPBF16PS does two bf16 products per float32 FMA lane). Measured with
    oneDNN on 2 cores: EPYC (avx512_bf16, no avx512_fp16) bf16 199 vs float32 85 GFLOP/s, the 10-member Sun et al.
    ensemble 2.3x faster and MiniLM encoding ~3-5x faster in bf16; an Intel Xeon with avx512_bf16 but without AMX
    ran bf16 matmuls at 0.56x float32 and MiniLM at 0.7x, so Intel needs AMX (benchmarks/results/*.json)."""
    flags = cpu_flags()
    amd = cpuinfo().get("vendor_id") == "AuthenticAMD"
    return "amx_bf16" in flags or ("avx512_bf16" in flags and amd)


def fast_int8() -> bool:
    """Whether int8 inference (OpenVINO, embrm.embedding) is this CPU's fastest way to run an encoder: int8 dot
    products in one instruction (VNNI: avx512_vnni or avx_vnni) without fast bfloat16. Measured
    (benchmarks/bench_embed.py, 2 cores): on a Xeon with avx512_vnni and no AMX, MiniLM in int8 ran 1.8x float32
    torch at cosine >= 0.998 to it; on an EPYC exposing only AVX2, int8 ran 1.03x (MiniLM) and 1.01x (SmolLM2-135M):
    no gain for the one-off conversion and agreement check, so AVX2 alone keeps float32. Where bfloat16 is fast
    (AMX, AMD Zen 4) embrm keeps torch bfloat16: the int8 path was not measured there."""
    flags = cpu_flags()
    return not fast_bf16() and bool({"avx512_vnni", "avx_vnni"} & flags)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run torch on `n` intra-op threads, restored afterwards (tiny ops where the pool's synchronisation costs more
    than the work; or a run that must match processes pinned to one thread bit for bit)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- the thread policy

THREADS_ENV = "EMBRM_THREADS"


def policy_threads() -> int:
    """Threads of every fit and evaluation (torch intra-op, BLAS, LightGBM): $EMBRM_THREADS, else 1. One number for
    every entry point (`embrm fit`, `embrm bon-sim`, a study's workers, the methods, the Python API), because float
    reductions split over threads sum in another order: only a fixed count gives bit-identical numbers whatever
    the machine's cores. One thread costs little here (a study runs W workers on W cores); raise it for one large
    fit, and every entry point follows."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise EmbrmError(f"{THREADS_ENV}={raw!r}: must be a whole number of threads >= 1 (unset: 1)")
    return int(raw)


# The count of the fit_threads block being run: a nested block without its own count keeps it.
_ACTIVE: contextvars.ContextVar[int | None] = contextvars.ContextVar("embrm_fit_threads", default=None)


def current_threads() -> int:
    """The count of the fit_threads block being run, else the policy's."""
    return _ACTIVE.get() or policy_threads()


@contextlib.contextmanager
def fit_threads(n: int | None = None):
    """Run the numerical work inside on `n` torch intra-op and BLAS threads (default: the enclosing block's count,
    else policy_threads()), both restored afterwards; embrm.pipeline gives LightGBM the same count. Entered by
    every fit and evaluation, never around embedding (the encoders use every core; their vectors are cached)."""
    from threadpoolctl import threadpool_limits

    n = current_threads() if n is None else int(n)
    token = _ACTIVE.set(n)
    try:
        with torch_threads(n), threadpool_limits(n, user_api="blas"):  # torch loads here, before a head imports it
            yield n
    finally:
        _ACTIVE.reset(token)


def on_fit_threads(function):
    """Decorate a fit or evaluation entry point: it runs inside fit_threads(its `threads=` keyword, if any)."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        with fit_threads(kwargs.get("threads")):
            return function(*args, **kwargs)

    return run
