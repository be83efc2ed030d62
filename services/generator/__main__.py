"""`python -m services.generator`: serve every generator in the model repository over gRPC."""

from __future__ import annotations

import asyncio
import logging
import sys

from services.core import config as config_parsing
from services.core.metrics import serve_metrics
from services.core.server import run_until_signal
from services.generator.app import GeneratorApp
from services.generator.config import GeneratorConfig


def main(argv: list[str] | None = None) -> int:
    config = config_parsing.parse(
        GeneratorConfig,
        "generator",
        argv,
        prog="python -m services.generator",
        description="Text generation over gRPC (ecomserve.generator.v1) with continuous batching and streaming.",
    )
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger(__name__).info("effective config:\n%s", config_parsing.describe(config))
    serve_metrics(config.metrics_port)
    return asyncio.run(_serve(config))


async def _serve(config: GeneratorConfig) -> int:
    app = GeneratorApp(config)
    return await run_until_signal(app.server, load=app.load, close=app.close, grace_s=config.grace_period_s)


if __name__ == "__main__":
    sys.exit(main())
