"""Host-memory policy of a training process: keep freed tensor memory for reuse instead of returning it.

A CPU training step allocates and frees the same large tensors every iteration (AD-FactorVAE at batch 64:
dozens of 8 MiB activations and gradients of the first conv, 64 × 32 × 32 × 32 float32). glibc's malloc
serves blocks above its mmap threshold with fresh ``mmap`` calls and trims the top of the heap when it is
freed, so each step faults its working set back in page by page and zeroes it. Measured on 2 CPU threads
(``python -m benchmarks.step``): the FactorVAE step ran 10.4 → 13.5 it/s and the 10-map AD-FactorVAE step
3.05 → 3.89 it/s with ``hold_freed_host_memory`` — the same arithmetic, only fewer page faults.

The cost: a process keeps up to its peak heap resident until it exits. A trial is one process that runs one
model, so its resident set stays at its peak either way; nothing else shares the heap.
"""

from __future__ import annotations

import ctypes
import functools

# mallopt parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest accepted mmap threshold on 64-bit (HEAP_MAX_SIZE / 2): blocks below it come from the heap
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# mallopt takes a C int: ~2 GiB of free heap top may stay with the process before glibc trims it
TRIM_THRESHOLD_BYTES = 2**31 - 1


@functools.cache
def hold_freed_host_memory() -> bool:
    """Tell glibc's malloc to serve blocks up to 32 MiB from the heap and not to trim it, for this process.

    Call it once at the start of a process that trains (a Ray trial does, in ``trainables.common``). Returns
    True when glibc took both settings; False where the C library is not glibc (macOS, musl), which keeps its
    defaults. Idempotent. Setting the thresholds also ends glibc's dynamic threshold adjustment for the process.
    Under an ``LD_PRELOAD``ed allocator (jemalloc, tcmalloc) glibc still accepts the call and says True, but that
    allocator keeps its own policy (both cache freed memory already); 32-bit glibc refuses the 32 MiB threshold
    (False).
    """
    try:  # the symbols already loaded into this process (no library search, which runs ldconfig)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no mallopt: not glibc; TypeError: Windows has no CDLL(None)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
