"""`kernels.reuse_freed_cpu_memory`: freed CPU tensors' memory is reused, not faulted in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from weightformer.kernels.allocator import _glibc

_SCRIPT = textwrap.dedent(
    """
    import resource, torch
    from weightformer.kernels import freed_cpu_memory_reused, reuse_freed_cpu_memory

    def faults_of_churn(floats=16 << 20):
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            torch.ones(floats)  # 64 MiB, written: every page touched, freed at once
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

    torch.ones(1)
    default = faults_of_churn()
    assert reuse_freed_cpu_memory() and freed_cpu_memory_reused()
    faults_of_churn()  # the heap grows once
    reused = faults_of_churn()
    from weightformer.kernels import release_freed_cpu_memory
    assert release_freed_cpu_memory()  # the free heap goes back to the OS: the next churn faults its pages in again
    released = faults_of_churn(16 << 20) - faults_of_churn(16 << 20)  # the first after release, less the second
    assert reuse_freed_cpu_memory(False) and not freed_cpu_memory_reused()
    # Blocks the heap holds stay there; a larger one than it holds is mapped afresh each time again.
    restored = faults_of_churn(64 << 20) // 4
    print(default, reused, released, restored)
    """
)


@pytest.mark.skipif(_glibc() is None, reason="mallopt is glibc's")
def test_reused_memory_takes_no_page_faults_and_the_defaults_come_back():
    # In a subprocess: the setting is process-wide.
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True).stdout
    default, reused, released, restored = map(int, out.split()[-4:])
    pages = 5 * (64 << 20) // 4096  # 81,920 pages of 4 KiB written per churn
    assert default > pages // 2  # glibc maps each 64 MiB block afresh: a fault per page (fewer with huge pages)
    assert reused < pages // 100
    assert released > (64 << 20) // 4096 // 2  # at least the first 64 MiB block faulted in anew
    assert restored > pages // 2
