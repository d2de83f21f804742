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

Huge pages cut the page faults either way. Linux can back memory with 2 MiB transparent huge pages (THP), one fault
and one zero-fill per 512 small pages. Where THP is `madvise` (the usual distribution default,
/sys/kernel/mm/transparent_hugepage/enabled) only memory that asks for it gets them, and glibc asks (madvise
MADV_HUGEPAGE on its heap and large mmaps) from version 2.35 on when the process starts with the tunable
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in its environment; it cannot be turned on later. `huge_pages()` reports
whether this process has it and what the kernel allows; `weightformer bench` records both. On the AMD EPYC of
benchmarks/GENERATION.md, one checkpointed WeightFormer-DiT-S/2 training step at latent 128, batch 32, on glibc's
defaults took 0.47 million page faults with it against 55 million without, and 101 s against 158 s.
The cost is memory rounded up to 2 MiB per mapping, and the
kernel's work to find free 2 MiB ranges (it falls back to small pages when it cannot).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = [
    "reuse_freed_cpu_memory", "freed_cpu_memory_reused", "release_freed_cpu_memory", "huge_pages",
    "HUGE_PAGES_TUNABLE", "with_huge_pages",
]

# glibc >= 2.35: malloc madvises its heap and large mmaps for transparent huge pages (read once, at process start).
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"

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


def _glibc_version() -> tuple[int, int] | None:
    libc = _glibc()
    if libc is None:
        return None
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    major, minor = libc.gnu_get_libc_version().decode().split(".")[:2]
    return int(major), int(minor)


def _tunable(tunables: str, name: str) -> str | None:
    """The value `GLIBC_TUNABLES` ("a.b.c=v:d.e=w", the last setting wins) gives `name`, or None."""
    value = None
    for item in tunables.split(":"):
        key, sep, val = item.partition("=")
        if sep and key.strip() == name:
            value = val.strip()
    return value


def _thp_mode(path: str = _THP_MODE_FILE) -> str | None:
    """The kernel's transparent huge page mode, the bracketed word of `path` ("always", "madvise", "never")."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def huge_pages(environ: dict[str, str] | None = None) -> dict[str, str | bool | None]:
    """Whether malloc's memory in this process can be backed by transparent huge pages, and why.

    `transparent_huge_pages`: the kernel's mode ("always", "madvise", "never"; None where unknown, e.g. not Linux).
    `malloc_hugetlb`: the `glibc.malloc.hugetlb` tunable of this process's environment (`environ`, default
    os.environ; what the process started with unless the script changed it), None where unset or the C library
    is not glibc 2.35 or later. `in_effect`: malloc's large blocks get huge pages: the mode is "always", or it is
    "madvise" and the tunable is 1. See the module docstring.
    """
    environ = os.environ if environ is None else environ
    version = _glibc_version()
    tunable = _tunable(environ.get("GLIBC_TUNABLES", ""), "glibc.malloc.hugetlb")
    if version is None or version < (2, 35):
        tunable = None
    mode = _thp_mode()
    return {
        "transparent_huge_pages": mode,
        "malloc_hugetlb": tunable,
        "in_effect": mode == "always" or (mode == "madvise" and tunable == "1"),
    }


def with_huge_pages(environ: dict[str, str] | None = None, enabled: bool = True) -> dict[str, str]:
    """A copy of `environ` (default os.environ) for a child process whose malloc asks for huge pages (or not).

    Enabled: adds `HUGE_PAGES_TUNABLE` to `GLIBC_TUNABLES` (the last setting of a name wins, so an earlier
    `glibc.malloc.hugetlb` is overridden). Not enabled: removes every `glibc.malloc.hugetlb` setting, and the
    variable where nothing else is left. Other tunables stay either way. The tunable is read at process start: use
    it for `subprocess` or `os.execve`, or set it in the shell (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1 weightformer`).
    """
    env = dict(os.environ if environ is None else environ)
    kept = [item for item in env.get("GLIBC_TUNABLES", "").split(":")
            if item and item.partition("=")[0].strip() != "glibc.malloc.hugetlb"]
    tunables = ":".join([*kept, HUGE_PAGES_TUNABLE] if enabled else kept)
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    else:
        env.pop("GLIBC_TUNABLES", None)
    return env
