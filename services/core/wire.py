"""What the services, the gateway and their tools agree on over the wire: metadata keys, the message size limit,
default model names. A name used in two files is defined here once."""

# The caller's request id: gRPC metadata and HTTP header, passed from the gateway to the backends.
REQUEST_ID = "x-request-id"
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
