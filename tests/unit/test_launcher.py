"""The development launcher's port picking: a port handed to one child is never handed to another."""

from __future__ import annotations

from services.dev.launcher import free_port


def test_free_port_never_hands_out_a_port_twice() -> None:
    ports = [free_port() for _ in range(1000)]  # the kernel alone offers some released ports again within 1,000
    assert len(set(ports)) == len(ports)
