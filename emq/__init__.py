"""EMQ: evolve training-free proxies for mixed-precision quantization."""

import ctypes
import ctypes.util
import sys

__version__ = "0.1.0"

# Heap allocations of this size or more get their own mmap and go back to the OS when freed.
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def bound_heap(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold so that freed tensors return their memory.

    glibc raises the threshold (up to 32 MB) each time a large block is freed; from then on
    tensors of a few MB come from the heap, and a campaign that evaluates thousands of genomes
    with intermediates of 1-30 MB fragments it: a leave-one-out campaign over 7 benches grew
    from 3 to 21 GB of RSS and was OOM-killed, the same run with a fixed 1 MB threshold stayed
    at 2.6-4.5 GB. A no-op (False) off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


bound_heap()
