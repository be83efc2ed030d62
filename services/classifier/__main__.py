"""`python -m services.classifier`: serve every classifier in the model repository over gRPC."""

from __future__ import annotations

import asyncio
import logging
import sys

from services.classifier.app import ClassifierApp
from services.classifier.config import ClassifierConfig
from services.core import config as config_parsing
from services.core.metrics import serve_metrics
from services.core.server import run_until_signal


def main(argv: list[str] | None = None) -> int:
    config = config_parsing.parse(
        ClassifierConfig,
        "classifier",
        argv,
        prog="python -m services.classifier",
        description="Text classification over gRPC (ecomserve.classifier.v1) with dynamic batching.",
    )
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger(__name__).info("effective config:\n%s", config_parsing.describe(config))
    serve_metrics(config.metrics_port)
    return asyncio.run(_serve(config))


async def _serve(config: ClassifierConfig) -> int:
    app = ClassifierApp(config)
    return await run_until_signal(app.server, load=app.load, close=app.close, grace_s=config.grace_period_s)


if __name__ == "__main__":
    sys.exit(main())
