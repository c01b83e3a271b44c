"""``hold_freed_host_memory``: glibc serves tensor-sized blocks from the heap and keeps them after free.

Checked in fresh interpreters (the setting is per process) against glibc's own accounting, ``mallinfo2``:
``hblkhd`` = bytes in mmapped blocks, ``arena`` = bytes of heap obtained with sbrk.
"""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

import pytest

from vae_attention.training import host_memory

PROBE = """
import ctypes, ctypes.util, json, sys
from vae_attention.training.host_memory import hold_freed_host_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
held = hold_freed_host_memory() if sys.argv[1] == "hold" else None
block = 16 * 2**20  # two first-conv activations of an AD step (64 x 32 x 32 x 32 float32 = 8 MiB each)
before = libc.mallinfo2()
pointer = libc.malloc(block)
ctypes.memset(pointer, 1, block)
while_held = libc.mallinfo2()
libc.free(pointer)
after_free = libc.mallinfo2()
print(json.dumps({"held": held, "mmapped_growth": while_held.hblkhd - before.hblkhd,
                  "heap": while_held.arena, "heap_after_free": after_free.arena}))
"""


def _probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.skipif(not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2"),
                    reason="needs glibc >= 2.33 (mallinfo2)")
def test_tensor_sized_blocks_come_from_the_heap_and_stay_after_free():
    block = 16 * 2**20
    default = _probe("default")
    # glibc's default gives the block back to the kernel on free: a fresh mmap, unmapped again (or, where an earlier
    # free raised its dynamic mmap threshold above the block, heap memory trimmed on free)
    assert default["mmapped_growth"] >= block or default["heap_after_free"] < default["heap"]
    held = _probe("hold")
    assert held["held"] is True
    assert held["mmapped_growth"] == 0  # served from the heap …
    assert held["heap_after_free"] == held["heap"]  # … and not trimmed on free (the default trims above 128 KiB)


def test_without_glibc_it_reports_false_and_changes_nothing(monkeypatch):
    host_memory.hold_freed_host_memory.cache_clear()
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda name: object())  # a C library without mallopt
    try:
        assert host_memory.hold_freed_host_memory() is False
    finally:
        host_memory.hold_freed_host_memory.cache_clear()
