"""GatewayConfig: every knob of the gateway, with flags and ECOMSERVE_GATEWAY_* twins."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.core.config import (
    event_loop_knob,
    knob,
    log_format_knob,
    log_level_knob,
    max_connection_age_knob,
    metrics_host_knob,
    require,
    require_server_knobs,
)
from services.core.wire import DEFAULT_GENERATOR_MODEL
from services.gateway.backends import BackendTls, listed_replicas

PACKAGE_DIR = Path(__file__).resolve().parent
# RouteMessage's calls in flight by default: two per replica keep each one's next batch queued while one runs.
ROUTE_CALLS_PER_REPLICA = 2
ROUTE_CALLS_UNLISTED = 16


@dataclass(frozen=True)
class GatewayConfig:
    host: str = knob("0.0.0.0", "address to listen on (gRPC and HTTP)")
    port: int = knob(50050, "gRPC port (0 picks a free one)")
    http_port: int = knob(8080, "JSON-over-HTTP port (0 picks a free one; -1 disables HTTP)")
    metrics_port: int = knob(9100, "Prometheus /metrics port (0 disables)")
    metrics_host: str = metrics_host_knob()
    classifier: str = knob(
        "127.0.0.1:50051",
        "classifier replicas: comma-separated HOST:PORT list, or dns:///NAME:PORT (a Kubernetes headless service); "
        "requests are balanced round robin over the SERVING ones",
    )
    generator: str = knob(
        "127.0.0.1:50052",
        "generator replicas, as --classifier; empty: no generator (the "
        "DescribeProduct and DraftReply operations answer UNAVAILABLE)",
    )
    generator_model: str = knob(DEFAULT_GENERATOR_MODEL, "generator model that DescribeProduct and DraftReply use")
    routing_file: str = knob(
        str(PACKAGE_DIR / "routing.toml"), "RouteMessage's table: classifier model, threshold, intent -> queue map"
    )
    templates: str = knob(
        str(PACKAGE_DIR / "templates"),
        "prompt template folder: <operation>/v<N>.toml, the newest version is the default",
    )
    api_keys_file: str = knob(
        "",
        "file of API keys, one `NAME=KEY` or `NAME=sha256:HEX` per line (# comments; keys of 16 characters or more); "
        "only hashes are kept; re-read when it changes and on SIGHUP",
    )
    api_keys: tuple[str, ...] = knob((), "API keys as NAME=KEY or NAME=sha256:HEX, comma-separated", secret=True)
    allow_unauthenticated: bool = knob(False, "serve without API keys (local development only)")
    rate_limit_per_s: float = knob(200.0, "requests per second per API key, sustained (0: no limit)")
    rate_limit_burst: int = knob(400, "requests an idle API key may send at once")
    auth_failures_per_s: float = knob(
        1.0,
        "failed authentications per second per peer address, sustained; past it (and the burst) a failing caller "
        "gets RESOURCE_EXHAUSTED; a valid key is never refused for it (0: no limit)",
    )
    auth_failure_burst: int = knob(20, "failed authentications a peer address may make at once")
    default_timeout_s: float = knob(60.0, "deadline given to backends when the caller sets none")
    deadline_margin_ms: float = knob(
        10.0, "subtracted from the caller's remaining time so the gateway can still answer before it passes"
    )
    max_attempts: int = knob(
        5,
        "attempts per backend call, retried on UNAVAILABLE with backoff (0.1 s doubling, capped at 1 s, jittered) "
        "so that the retries span a replica's death (1: no retries)",
    )
    max_request_bytes: int = knob(
        4 * 1024 * 1024, "largest request accepted, in bytes: HTTP bodies (413 past it) and gRPC messages alike"
    )
    http_body_timeout_s: float = knob(30.0, "seconds an HTTP caller has to send its request body (408 past it)")
    http_idle_timeout_s: float = knob(
        15.0,
        "an HTTP connection that sends no whole request head within this many seconds of opening or of its last "
        "response is closed (idle keep-alive and slow senders alike)",
    )
    http_max_connections: int = knob(1000, "open HTTP connections at most; past it a new one gets 503 and is closed")
    max_inflight_calls: int = knob(
        256,
        "calls worked on at once, gRPC and HTTP, streams included; past it a call gets RESOURCE_EXHAUSTED (HTTP 429) "
        "at once, which bounds the gateway's memory under overload (raise it for many generator replicas' streams; "
        "0: no limit)",
    )
    max_text_chars: int = knob(4000, "longest customer message or text, in characters")
    max_texts_per_request: int = knob(
        64,
        "most texts in one ClassifyTexts or EmbedTexts request, and in one of AnalyzeReviews' Classify calls "
        "(keep it within the classifiers' --max-texts-per-request)",
    )
    route_max_calls: int = knob(
        0,
        "RouteMessage's Classify calls in flight at once; messages that arrive while all are busy go out together "
        f"in the next call (0: {ROUTE_CALLS_PER_REPLICA} per replica of a --classifier list, "
        f"{ROUTE_CALLS_UNLISTED} for a name such as dns:///, whose replicas are not known)",
    )
    route_max_texts_per_call: int = knob(
        32,
        "most messages in one of RouteMessage's Classify calls (at most the classifiers' max_texts_per_request; "
        "1: a call per message)",
    )
    tls_cert_file: str = knob(
        "",
        "PEM certificate chain: serve gRPC and HTTP over TLS (with --tls-key-file); re-read when the files change",
    )
    tls_key_file: str = knob("", "PEM private key of --tls-cert-file")
    backend_tls_ca_file: str = knob(
        "", "PEM CA certificate(s) that signed the backends' certificates: connect to them over TLS"
    )
    backend_tls_cert_file: str = knob(
        "",
        "PEM client certificate the gateway presents to backends that require mutual TLS (with "
        "--backend-tls-key-file); a rotated one is used for new connections, calls in flight finish",
    )
    backend_tls_key_file: str = knob("", "PEM private key of --backend-tls-cert-file")
    backend_tls_server_name: str = knob(
        "", "name expected in the backends' certificates when it is not the host of --classifier/--generator"
    )
    max_connection_age_s: float = max_connection_age_knob()
    grace_period_s: float = knob(30.0, "on SIGTERM, how long in-flight requests (streams too) may take to finish")
    log_level: str = log_level_knob()
    log_format: str = log_format_knob()
    event_loop: str = event_loop_knob()

    def __post_init__(self) -> None:
        require_server_knobs(self)
        require(-1 <= self.http_port <= 65535, f"http_port must be -1..65535, got {self.http_port}")
        require(bool(self.classifier.strip()), "classifier must name at least one replica address")
        require(self.rate_limit_per_s >= 0, f"rate_limit_per_s must be >= 0, got {self.rate_limit_per_s}")
        require(self.rate_limit_burst >= 1, f"rate_limit_burst must be >= 1, got {self.rate_limit_burst}")
        require(self.auth_failures_per_s >= 0, f"auth_failures_per_s must be >= 0, got {self.auth_failures_per_s}")
        require(self.auth_failure_burst >= 1, f"auth_failure_burst must be >= 1, got {self.auth_failure_burst}")
        require(self.default_timeout_s > 0, f"default_timeout_s must be > 0, got {self.default_timeout_s}")
        require(self.deadline_margin_ms >= 0, f"deadline_margin_ms must be >= 0, got {self.deadline_margin_ms}")
        require(1 <= self.max_attempts <= 5, f"max_attempts must be 1..5 (gRPC's limit), got {self.max_attempts}")
        require(self.max_request_bytes >= 1024, f"max_request_bytes must be >= 1024, got {self.max_request_bytes}")
        require(self.http_body_timeout_s > 0, f"http_body_timeout_s must be > 0, got {self.http_body_timeout_s}")
        require(self.http_idle_timeout_s > 0, f"http_idle_timeout_s must be > 0, got {self.http_idle_timeout_s}")
        require(self.http_max_connections >= 1, f"http_max_connections must be >= 1, got {self.http_max_connections}")
        require(self.max_inflight_calls >= 0, f"max_inflight_calls must be >= 0, got {self.max_inflight_calls}")
        require(self.max_text_chars >= 1, f"max_text_chars must be >= 1, got {self.max_text_chars}")
        require(self.max_texts_per_request >= 1, "max_texts_per_request must be >= 1")
        require(self.route_max_calls >= 0, f"route_max_calls must be >= 0, got {self.route_max_calls}")
        require(
            self.route_max_texts_per_call >= 1,
            f"route_max_texts_per_call must be >= 1, got {self.route_max_texts_per_call}",
        )
        require(
            bool(self.tls_cert_file) == bool(self.tls_key_file),
            "tls_cert_file and tls_key_file must be given together",
        )
        require(
            bool(self.backend_tls_cert_file) == bool(self.backend_tls_key_file),
            "backend_tls_cert_file and backend_tls_key_file must be given together",
        )
        require(
            bool(self.backend_tls_ca_file) or not (self.backend_tls_cert_file or self.backend_tls_server_name),
            "backend_tls_cert_file and backend_tls_server_name need backend_tls_ca_file (TLS to the backends)",
        )

    @property
    def route_calls(self) -> int:
        """route_max_calls, with 0 resolved against the --classifier replicas."""
        if self.route_max_calls:
            return self.route_max_calls
        replicas = listed_replicas(self.classifier)
        return ROUTE_CALLS_UNLISTED if replicas is None else ROUTE_CALLS_PER_REPLICA * replicas

    @property
    def backend_tls(self) -> BackendTls | None:
        """TLS to the backends, when backend_tls_ca_file is set."""
        if not self.backend_tls_ca_file:
            return None
        return BackendTls(
            self.backend_tls_ca_file,
            self.backend_tls_cert_file,
            self.backend_tls_key_file,
            self.backend_tls_server_name,
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
