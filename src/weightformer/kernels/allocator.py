"""CPU memory reuse: glibc's malloc keeping freed blocks for the next step instead of returning them to the OS.

PyTorch allocates CPU tensors with the C library's malloc. glibc serves every block above its mmap threshold
(at most 32 MiB) with a fresh `mmap` and returns it with `munmap` when the tensor dies, and trims the heap's top
back to the OS too. The next allocation of the same size then touches new pages, and the kernel zero-fills each
4 KiB page on its first write (a page fault). A WeightFormer-DiT-S/2 guided sampling step at latent 32, batch 32,
allocates (64 x 256 x 1536) hidden maps of 96 MiB; on the AMD EPYC of benchmarks/GENERATION.md it took about
565,000 page faults per step, a fifth of the step's time (the attention DiT as many, in a longer step), and none
once freed memory stays with the process. That cost is per byte allocated, not per MAC, so it holds a model that does
fewer MACs on the same activations further below its MAC ratio.

`reuse_freed_cpu_memory()` sets two of glibc's malloc parameters (`mallopt`): no mmap for large blocks
(M_MMAP_MAX = 0; they come from the heap and go back to it) and no trimming of the heap (M_TRIM_THRESHOLD = -1,
which mallopt(3) documents as "disables trimming completely"), the CPU counterpart of the caching allocator
PyTorch uses on CUDA. The process's resident memory then stays at its peak instead of falling between steps.
glibc's environment variables `MALLOC_MMAP_MAX_` and `MALLOC_TRIM_THRESHOLD_` set the same parameters before
Python starts, but a finite threshold is not enough: 2147483647 (the largest int) still hands a free heap top
above 2 GiB back to the OS at every free, which compiled WeightFormer-DiT-S/2 sampling at latent 128, batch 32,
paid for with ~4.2 million page faults per step. Other allocators (jemalloc, tcmalloc, preloaded) cache by
themselves; where the C library is not glibc, the function does nothing and says so.

The price is fragmentation. glibc's heap cannot move a live block, so a free block between two live ones serves
only requests that fit in it. Most steps free and reallocate the same sizes in the same order and reuse their
holes, but activation checkpointing at large activations does not: each block's recomputed activations and
gradients are allocated around the kept inputs and gradients of its neighbours. One WeightFormer-DiT-S/2 training
step, checkpointed, batch 8, at latent 128: 4975 MiB resident with freed memory reused against 2055 MiB with
glibc's defaults, for 2010 MiB of tensors; at latent 64, 1328 against 570 for 528; not checkpointed, within 6 %
of its tensors either way (`benchmarks/cpu_heap_fragmentation.py`). Where memory, not time, is the limit, use
glibc's defaults (`reuse_freed_cpu_memory(False)`), which pay for it in page faults (benchmarks/GENERATION.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["reuse_freed_cpu_memory", "freed_cpu_memory_reused", "release_freed_cpu_memory"]

# glibc's mallopt parameters (malloc.h) and their defaults.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
# mallopt(3): -1 disables trimming completely. Its largest positive int, 2**31 - 1, still hands a free heap top above
# 2 GiB back to the OS at every free: WeightFormer-DiT-S/2 guided sampling at latent 128, batch 32 (1.6 GiB hidden
# maps), compiled, faulted ~4.2 million pages in per step with it, none with -1.
_NEVER_TRIM = -1

_state = {"reused": False}


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc (not musl)
        libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def reuse_freed_cpu_memory(enabled: bool = True) -> bool:
    """Keep freed CPU memory in the process for reuse (enabled) or restore glibc's defaults (not enabled).

    Returns whether the setting took effect: False where the C library is not glibc (macOS, Windows, musl).
    Process-wide and immediate; blocks already mapped are unaffected until freed. See the module docstring.
    """
    libc = _glibc()
    if libc is None:
        return False
    mmap_max, trim = (0, _NEVER_TRIM) if enabled else (_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD)
    done = bool(libc.mallopt(_M_MMAP_MAX, mmap_max)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))
    if done:
        _state["reused"] = bool(enabled)
    return done


def freed_cpu_memory_reused() -> bool:
    """Whether `reuse_freed_cpu_memory()` is in effect in this process."""
    return _state["reused"]


def release_freed_cpu_memory() -> bool:
    """Hand the memory malloc holds free back to the OS now (glibc's malloc_trim(0), whatever the settings above).

    For measurements of resident memory (RSS): after it, what a block of code allocates shows as RSS growth
    again instead of reusing pages kept from earlier work. Returns False where the C library is not glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
