"""Keep freed CPU memory in the process, so training on a CPU stops paying page faults.

A training step allocates activations of several MB each and frees them a few ms later. glibc
serves blocks over its mmap threshold with fresh ``mmap`` pages and returns them to the kernel on
``free``, and trims the heap top on every free above 128 KiB, so the next step touches new pages
again: every page is a fault (~1 µs on a VM), and faults serialise the intra-op threads. On the
2-core dev machine that was more than half of a ResNet-20 step (ReLU ran at 3 GB/s on 84 MB
tensors; see BENCHMARKS.md). ``keep_freed_memory()`` tells glibc never to use ``mmap`` for an
allocation and never to trim, so a step reuses the previous step's pages. The cost: memory freed
during training is not given back to the kernel until the process exits, and the heap keeps some
slack (seen: ResNet-20 at batch 128, 664 MB RSS against 601 MB, flat after 20 steps).

Process-wide and not undoable (glibc's adaptive mmap threshold stays off once set), so it is
called explicitly where a process decides how it trains (``setup_torch`` for the CLI; the
benchmarks for lthfast's rows, after the plain-PyTorch rows ran under glibc's defaults), never as
a side effect of a library call.

    python -c "from lthfast.train.allocator import keep_freed_memory; print(keep_freed_memory())"
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt parameters of glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


@functools.lru_cache(maxsize=1)
def _mallopt():
    """glibc's ``mallopt``, or None where the C library is not glibc (macOS, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it; musl's mallopt is a no-op)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def keep_freed_memory() -> bool:
    """Never mmap, never trim: freed blocks stay in the heap for the next step. True if applied."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    # glibc caps M_TRIM_THRESHOLD at INT_MAX here; 2 GiB of free heap top before a trim is "never"
    # at CIFAR scale, and the heap is reused long before it grows that much.
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))

