"""`python -m services.gateway`: the e-commerce API (gRPC and JSON over HTTP) in front of the model services."""

from __future__ import annotations

import sys

from services.core.server import serve_main
from services.gateway.app import GatewayApp
from services.gateway.config import GatewayConfig


def main(argv: list[str] | None = None) -> int:
    return serve_main(
        GatewayConfig,
        "gateway",
        GatewayApp,
        argv,
        description="The e-commerce API (ecomserve.gateway.v1, gRPC and JSON over HTTP): authenticates, validates, "
        "applies prompt templates and routes to classifier and generator replicas.",
    )


if __name__ == "__main__":
    sys.exit(main())
