"""What the services, the gateway and their tools agree on over the wire: metadata keys, the message size limit,
default model names, what a request id may hold. A name used in two files is defined here once."""

import logging
import re
import uuid

log = logging.getLogger(__name__)

# The caller's request id: gRPC metadata and HTTP header, passed from the gateway to the backends.
REQUEST_ID = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
# What a caller's x-request-id may hold: it travels on in gRPC metadata (ASCII only), in coalesced calls joined by
# commas, and into logs, so anything else is replaced rather than passed on.
REQUEST_ID_PATTERN = re.compile(rf"[A-Za-z0-9._:/+=@~-]{{1,{MAX_REQUEST_ID_CHARS}}}")
# W3C trace context: the trace id of a call that carries it goes on its log lines.
TRACEPARENT = "traceparent"
# gRPC tells a retried attempt how many came before it; servers echo it back under their own key, so that the
# gateway can count the retries its channel made on its own.
GRPC_PREVIOUS_ATTEMPTS = "grpc-previous-rpc-attempts"
PREVIOUS_ATTEMPTS = "ecomserve-previous-attempts"
# Large enough for max_texts_per_request long texts, small enough to bound memory per call.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# The embedded default generator (`python -m export defaults`).
DEFAULT_GENERATOR_MODEL = "smollm2-135m-instruct"

# The project's own gRPC services (our protos, and the Open Inference Protocol's), as opposed to health and reflection.
SERVED_PREFIXES = ("/ecomserve.", "/inference.")


def checked_request_id(presented: str | None) -> str:
    """The caller's request id when it is 1-128 characters of [A-Za-z0-9._:/+=@~-]; otherwise a new one (the
    answer carries the id used, and the replaced one is logged, escaped)."""
    if presented and REQUEST_ID_PATTERN.fullmatch(presented):
        return presented
    request_id = uuid.uuid4().hex
    if presented:
        log.info(
            "x-request-id %s replaced by %s: ids are 1-%d characters of A-Z a-z 0-9 . _ : / + = @ ~ -",
            ascii(presented[: MAX_REQUEST_ID_CHARS + 1]),
            request_id,
            MAX_REQUEST_ID_CHARS,
        )
    return request_id
