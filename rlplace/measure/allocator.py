"""Keep freed host memory in the process, as a device's caching allocator does.

glibc serves large blocks (above a threshold it raises as blocks are freed) with fresh
``mmap`` pages and gives the top of the heap back to the OS once enough of it is free. A
training step keeps many activations alive until its backward, so after each step's frees
glibc may return those pages, and the next step pays a page fault (and the kernel's zeroing)
on first touch of every activation again: a six-LayerNorm chain measured 8.7 ms a step
that way and 3.5 ms without it, while its ops timed one by one (which reuse one freed block
call after call) add up to ~3 ms. Whether a step pays depends on the allocation history,
so it also varies from run to run. A GPU's caching allocator pays none of it, and neither
does the simulator. `steady_allocator` fixes glibc's thresholds (``mallopt``) so freed
memory stays in the heap for reuse; every process that times ops or steps calls it first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

#: glibc ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Largest fixed mmap threshold glibc accepts on 64-bit hosts (``DEFAULT_MMAP_THRESHOLD_MAX``);
#: blocks above it (32 MiB) still get their own pages.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: Free memory at the top of the heap kept before giving any back to the OS (mallopt's
#: largest value: 2 GiB).
TRIM_THRESHOLD_BYTES = 2**31 - 1


@functools.cache
def steady_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (once; later calls return the
    first answer). False where the C library is not glibc or refuses (nothing changes)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
