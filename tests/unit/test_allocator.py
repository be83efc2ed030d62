"""The generator's malloc settings: an array freed in a worker thread leaves its pages for the next one, so a copy of
the KV cache into a new array does not fault its pages in again. Each case runs in a process of its own (the
settings last for the process)."""

from __future__ import annotations

import os
import subprocess
import sys

from services.core.allocator import ENVIRONMENT

# In a worker thread, as the decode thread does: free an 8 MiB array, make another, print the page faults it took.
PROBE = """
import resource, sys, threading
import numpy as np
from services.core.allocator import reuse_freed_memory
applied = reuse_freed_memory(64) if sys.argv[1] == "reuse" else None
faults = []
def copy():
    np.ones(8 << 20, np.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    kept = np.ones(8 << 20, np.uint8)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=copy)
thread.start()
thread.join()
print(applied, faults[0])
"""


def probe(mode: str, **env: str) -> tuple[str, int]:
    clean = {name: value for name, value in os.environ.items() if name not in ENVIRONMENT}
    ran = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=clean | env, capture_output=True, text=True, timeout=60, check=True
    )
    applied, faults = ran.stdout.split()
    return applied, int(faults)


def test_freed_memory_is_reused_without_page_faults() -> None:
    _, faults_by_default = probe("default")
    applied, faults_reusing = probe("reuse")
    assert applied == "True"
    assert faults_by_default > 256  # 8 MiB is 2,048 pages: fresh from the kernel each time
    assert faults_reusing < 16


def test_an_operators_malloc_environment_wins() -> None:
    applied, _ = probe("reuse", MALLOC_ARENA_MAX="4")
    assert applied == "False"
