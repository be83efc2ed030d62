"""Progress lines on stderr for every export step that may take more than a second."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def step(label: str) -> Iterator[None]:
    say(f"[export] {label} ...")
    started = time.perf_counter()
    yield
    say(f"[export] {label}: done in {time.perf_counter() - started:.1f} s")
