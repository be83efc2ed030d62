"""Every Prometheus object of the project. Names: ecomserve_ prefix, base units, counters end in _total.

Labels come only from bounded sets: service, model, method, code, reason, finish_reason, phase, provider, backend,
api_key (the names of the configured keys, never the keys).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info, disable_created_metrics

# The *_created series double the scrape size and no rule or dashboard uses them.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)

# Per-model metrics: the service, the model name and its version as separate labels (sum over version for a model).
MODEL_LABELS = ["service", "model", "version"]
REQUESTS = Counter("ecomserve_requests_total", "RPCs answered, by final status code.", ["service", "method", "code"])
REQUEST_DURATION = Histogram(
    "ecomserve_request_duration_seconds",
    "Time from receiving an RPC to its final status.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
INFLIGHT = Gauge("ecomserve_inflight_requests", "RPCs being handled right now.", ["service"])

QUEUE_DURATION = Histogram(
    "ecomserve_queue_duration_seconds",
    "Time an item waited in the batch queue before its batch started.",
    MODEL_LABELS,
    buckets=FAST_BUCKETS,
)
INFERENCE_DURATION = Histogram(
    "ecomserve_inference_duration_seconds",
    "Wall time of one classifier onnxruntime run (a batch, or part of one).",
    MODEL_LABELS,
    buckets=FAST_BUCKETS,
)
BATCH_SIZE = Histogram("ecomserve_batch_size", "Items per executed batch.", MODEL_LABELS, buckets=BATCH_BUCKETS)
BATCHES = Counter("ecomserve_batches_total", "Batches executed.", MODEL_LABELS)
BATCH_ITEMS = Counter(
    "ecomserve_batch_items_total",
    "Items executed in batches; mean batch size = rate(batch_items_total) / rate(batches_total).",
    MODEL_LABELS,
)
INFERENCE_RUNS = Counter(
    "ecomserve_inference_runs_total",
    "onnxruntime runs; a classifier batch is split into runs by length, or into one run per text for models that "
    "quantize activations per run.",
    MODEL_LABELS,
)
PADDING_EFFICIENCY = Histogram(
    "ecomserve_padding_efficiency_ratio",
    "Real tokens / padded tokens per onnxruntime run (1 = no padding waste).",
    MODEL_LABELS,
    buckets=RATIO_BUCKETS,
)
QUEUE_DEPTH = Gauge("ecomserve_queue_depth", "Items waiting in the batch queue.", MODEL_LABELS)
QUEUE_CAPACITY = Gauge(
    "ecomserve_queue_capacity",
    "Most items the queue holds before new requests get RESOURCE_EXHAUSTED (queue_depth / queue_capacity is "
    "saturation).",
    MODEL_LABELS,
)
DROPPED_ITEMS = Counter(
    "ecomserve_dropped_items_total",
    "Queued items dropped before running because their caller cancelled or their deadline passed.",
    [*MODEL_LABELS, "reason"],
)
SERVING = Gauge(
    "ecomserve_serving",
    "1 while the service reports SERVING on grpc.health.v1 (0 loading, draining, not ready).",
    ["service"],
)
MODEL_LOAD_FAILURES = Counter(
    "ecomserve_model_load_failures_total",
    "Model versions that appeared in the repository while serving but could not be loaded.",
    MODEL_LABELS,
)
LOG_RECORDS_DROPPED = Counter(
    "ecomserve_log_records_dropped_total",
    "Log records dropped because the log sink (stderr) did not keep up; the service never waits for it.",
    ["service"],
)
MODEL_READY = Gauge("ecomserve_model_ready", "1 when the model version is loaded and warmed up.", MODEL_LABELS)
RUNTIME_INFO = Info("ecomserve_runtime", "onnxruntime version and execution provider in use per model.", MODEL_LABELS)


# Generator (continuous batching).
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
TIME_TO_FIRST_TOKEN = Histogram(
    "ecomserve_time_to_first_token_seconds",
    "Time from receiving a generation request to its first generated token (queueing and prefill included).",
    MODEL_LABELS,
    buckets=LATENCY_BUCKETS,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "ecomserve_time_per_output_token_seconds",
    "Mean time between a sequence's generated tokens after the first, observed once per finished sequence.",
    MODEL_LABELS,
    buckets=TOKEN_BUCKETS,
)
GENERATED_TOKENS = Counter("ecomserve_generated_tokens_total", "Tokens generated.", MODEL_LABELS)
PROMPT_TOKENS = Counter("ecomserve_prompt_tokens_total", "Prompt tokens prefilled.", MODEL_LABELS)
PREFIX_CACHE_TOKENS = Counter(
    "ecomserve_prefix_cache_tokens_total",
    "Prompt tokens prefilled, by outcome: hit (their KV came from the prefix cache) or miss (computed).",
    [*MODEL_LABELS, "outcome"],
)
PREFIX_CACHE_BYTES = Gauge(
    "ecomserve_prefix_cache_bytes", "Memory held by the prefix cache's KV (at most --prefix-cache-mb).", MODEL_LABELS
)
RUNNING_SEQUENCES = Gauge(
    "ecomserve_running_sequences", "Sequences in the running batch (decoded every step).", MODEL_LABELS
)
WAITING_SEQUENCES = Gauge("ecomserve_waiting_sequences", "Requests waiting to join the running batch.", MODEL_LABELS)
BATCH_OCCUPANCY = Histogram(
    "ecomserve_batch_occupancy_ratio",
    "Running sequences / max_running_sequences, observed once per decode step.",
    MODEL_LABELS,
    buckets=RATIO_BUCKETS,
)
STEP_DURATION = Histogram(
    "ecomserve_step_duration_seconds",
    "Wall time of one scheduler step's forward pass, by phase (prefill of joining requests, decode of the batch).",
    [*MODEL_LABELS, "phase"],
    buckets=FAST_BUCKETS,
)
STOPPED_STEPS = Counter(
    "ecomserve_stopped_decode_steps_total",
    "Decode steps given up part-way so that newly arrived requests were prefilled first (each is decoded again).",
    MODEL_LABELS,
)
FINISHED_SEQUENCES = Counter(
    "ecomserve_finished_sequences_total",
    "Sequences that left the scheduler, by finish_reason (length, stop_sequence, end_of_text, cancelled, deadline, "
    "error).",
    [*MODEL_LABELS, "finish_reason"],
)


# Gateway.
BACKEND_REQUESTS = Counter(
    "ecomserve_backend_requests_total",
    "Calls from the gateway to a backend, by final status.",
    ["backend", "method", "code"],
)
BACKEND_DURATION = Histogram(
    "ecomserve_backend_request_duration_seconds",
    "Time of a gateway -> backend call, retries included (streams: until the last message).",
    ["backend", "method"],
    buckets=LATENCY_BUCKETS,
)
COALESCED_TEXTS = Histogram(
    "ecomserve_backend_coalesced_texts",
    "Texts per gateway -> backend call that carries several callers' messages (RouteMessage's Classify).",
    ["backend", "method"],
    buckets=BATCH_BUCKETS,
)
BACKEND_RETRIES = Counter(
    "ecomserve_backend_retries_total",
    "Attempts the gateway's channel retried (UNAVAILABLE from a replica) before a replica answered.",
    ["backend", "method"],
)
BACKEND_READY = Gauge(
    "ecomserve_backend_ready", "1 while the backend has at least one SERVING replica connected.", ["backend"]
)
RATE_LIMITED = Counter(
    "ecomserve_rate_limited_requests_total", "Requests refused by an API key's rate limit.", ["service", "api_key"]
)


def forget_version(labels: tuple[str, ...], *families: Gauge | Info) -> None:
    """Drop an unloaded model version's series of `families` (`labels`: service, model, version): gauges that read
    the live model through a callback would keep the unloaded model in memory, and every one of them would go on
    reporting a version that is gone."""
    for family in families:
        try:
            family.remove(*labels)
        except KeyError:  # never set for this version
            pass
