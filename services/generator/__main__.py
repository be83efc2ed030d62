"""`python -m services.generator`: serve every generator in the model repository over gRPC."""

from __future__ import annotations

import sys

from services.core.server import serve_main
from services.generator.app import GeneratorApp
from services.generator.config import GeneratorConfig


def main(argv: list[str] | None = None) -> int:
    return serve_main(
        GeneratorConfig,
        "generator",
        GeneratorApp,
        argv,
        description="Text generation over gRPC (ecomserve.generator.v1) with continuous batching and streaming.",
    )


if __name__ == "__main__":
    sys.exit(main())
