"""Running coroutines side by side when one failure makes the others pointless."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def all_or_first_error(*coroutines: Coroutine[Any, Any, T]) -> list[T]:
    """Every result, in order; or the first error raised, once the others are cancelled and awaited (so no work
    runs on for a caller that already has its answer)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coroutine) for coroutine in coroutines]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]
