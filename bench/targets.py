"""How benchmarks report a target: the measured value, the bound, and whether it was met."""

from __future__ import annotations

from typing import Any


def check(value: float, op: str, bound: float) -> dict[str, Any]:
    met = value >= bound if op == ">=" else value <= bound
    return {"value": round(value, 3), "target": f"{op} {bound}", "met": met}
