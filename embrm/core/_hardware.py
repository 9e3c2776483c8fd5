"""What this CPU does fast: one place that decides where bfloat16 pays (embedders and MLP heads both ask it)."""

from __future__ import annotations

import contextlib
import functools


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
