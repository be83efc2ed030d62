"""The gateway when things go wrong: rate limits, a backend down and back, a replica killed under load,
readiness that follows the backends, and a graceful stop."""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from services.core.server import LIVENESS_SERVICE
from services.dev.launcher import free_port
from tests.e2e import http_client
from tests.e2e.conftest import API_KEY, OTHER_KEY, Launcher, Process, load_report

pytestmark = pytest.mark.e2e

AUTH = (("x-api-key", API_KEY),)
ROUTE = gateway_pb2.RouteMessageRequest(message="I want a refund for my order")


def health_of(process: Process, service: str = "") -> int:
    with grpc.insecure_channel(process.address) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll until `condition()` holds; a connection refused while a process starts counts as not yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except (OSError, grpc.RpcError):
            pass
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_rate_limit_per_key_with_a_retry_hint(launcher: Launcher, model_repo: Path) -> None:
    classifier = launcher.classifier(model_repo)
    gateway = launcher.gateway([classifier], None, "--rate-limit-per-s", "0.5", "--rate-limit-burst", "2")
    classifier.wait_serving()
    gateway.wait_serving()
    with grpc.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for _ in range(2):
            stub.RouteMessage(ROUTE, metadata=AUTH, timeout=30)
        with pytest.raises(grpc.RpcError) as error:
            stub.RouteMessage(ROUTE, metadata=AUTH, timeout=30)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit" in error.value.details()
        status = rpc_status.from_call(error.value)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(retry) and 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 2
        # The bucket is per key: the other key still passes.
        stub.RouteMessage(ROUTE, metadata=(("x-api-key", OTHER_KEY),), timeout=30)
    reply = http_client.call(f"{gateway.http}/v1/route-message", {"message": "refund"}, API_KEY)
    assert reply.status == 429 and int(reply.headers["retry-after"]) >= 1


def test_backend_down_fails_fast_naming_it_then_recovers(
    launcher: Launcher, model_repo: Path, generator_repo: Path
) -> None:
    classifier = launcher.classifier(model_repo)
    generator = launcher.generator(generator_repo)
    gateway = launcher.gateway([classifier], generator)
    for process in (classifier, generator, gateway):
        process.wait_serving()
    with grpc.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        describe = gateway_pb2.DescribeProductRequest(title="Wool socks", max_words=10)
        assert stub.DescribeProduct(describe, metadata=AUTH, timeout=30).description

        generator.kill()
        wait_for(lambda: health_of(gateway) == health_pb2.HealthCheckResponse.NOT_SERVING)
        started = time.monotonic()
        for _ in range(5):  # each fails at once: no waiting on connection attempts while no replica is SERVING
            with pytest.raises(grpc.RpcError) as error:
                stub.DescribeProduct(describe, metadata=AUTH, timeout=30)
        assert time.monotonic() - started < 2.5
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        # It names the backend, never its replicas' addresses.
        assert "generator backend" in error.value.details() and str(generator.port) not in error.value.details()
        reply = http_client.call(f"{gateway.http}/v1/describe-product", {"title": "Wool socks"}, API_KEY)
        assert reply.status == 503 and "generator backend" in reply.body["error"]["message"]
        ready = http_client.call(f"{gateway.http}/readyz")
        assert ready.status == 503 and ready.body["backends"] == {"classifier": True, "generator": False}
        # The classifier still answers: only the operations that need the generator fail.
        assert stub.RouteMessage(ROUTE, metadata=AUTH, timeout=30).queue

        launcher.generator(generator_repo, port=generator.port).wait_serving()
        wait_for(lambda: health_of(gateway) == health_pb2.HealthCheckResponse.SERVING)
        assert stub.DescribeProduct(describe, metadata=AUTH, timeout=30).description
    assert http_client.call(f"{gateway.http}/readyz").status == 200


def test_readiness_follows_the_backends(launcher: Launcher, model_repo: Path) -> None:
    absent = Process("classifier", None, free_port(), Path(), 0)  # type: ignore[arg-type]
    gateway = launcher.gateway([absent], None)
    wait_for(lambda: http_client.call(f"{gateway.http}/healthz").status == 200)  # alive without backends
    assert http_client.call(f"{gateway.http}/readyz").status == 503
    assert health_of(gateway) == health_pb2.HealthCheckResponse.NOT_SERVING
    # Kubernetes' liveness probe name: alive while not ready, so a backend outage restarts no gateway.
    assert health_of(gateway, LIVENESS_SERVICE) == health_pb2.HealthCheckResponse.SERVING

    classifier = launcher.classifier(model_repo, port=absent.port).wait_serving()
    wait_for(lambda: health_of(gateway) == health_pb2.HealthCheckResponse.SERVING)
    assert http_client.call(f"{gateway.http}/readyz").status == 200

    classifier.stop()  # SIGTERM: the replica reports NOT_SERVING, drains and exits
    wait_for(lambda: http_client.call(f"{gateway.http}/readyz").status == 503)
    assert health_of(gateway) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health_of(gateway, LIVENESS_SERVICE) == health_pb2.HealthCheckResponse.SERVING
    assert http_client.call(f"{gateway.http}/healthz").status == 200


def test_no_accepted_request_lost_when_a_replica_is_killed(launcher: Launcher, model_repo: Path) -> None:
    replicas = [launcher.classifier(model_repo), launcher.classifier(model_repo)]
    gateway = launcher.gateway(replicas, None, "--rate-limit-per-s", "0")
    for process in (*replicas, gateway):
        process.wait_serving()
    answered: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def caller(stub: gateway_pb2_grpc.GatewayServiceStub) -> None:
        while not stop.is_set():
            try:
                answered.append(stub.RouteMessage(ROUTE, metadata=AUTH, timeout=30).queue)
            except grpc.RpcError as error:
                failures.append(error)

    with grpc.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        threads = [threading.Thread(target=caller, args=(stub,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(answered) >= 50)
        replicas[0].kill()
        count_at_kill = len(answered)
        wait_for(lambda: len(answered) >= count_at_kill + 100)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert failures == []
    assert len(answered) >= count_at_kill + 100


def test_gateway_drains_a_stream_on_sigterm(launcher: Launcher, model_repo: Path, generator_repo: Path) -> None:
    classifier, generator = launcher.classifier(model_repo), launcher.generator(generator_repo)
    gateway = launcher.gateway([classifier], generator)
    for process in (classifier, generator, gateway):
        process.wait_serving()
    with grpc.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        stream = stub.DraftReply(
            gateway_pb2.DraftReplyRequest(message="hello", max_words=100), metadata=AUTH, timeout=60
        )
        first = next(stream)
        gateway.child.send_signal(signal.SIGTERM)
        rest = list(stream)
    messages = [first, *rest]
    assert messages[-1].finish_reason != gateway_pb2.FINISH_REASON_UNSPECIFIED
    assert gateway.child.wait(timeout=30) == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_on_both_listeners(launcher: Launcher, model_repo: Path, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    classifier = launcher.classifier(model_repo).wait_serving()
    gateway = launcher.gateway([classifier], None, "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(gateway.address, credentials) as channel:
        wait_for(lambda: health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
                 == health_pb2.HealthCheckResponse.SERVING)  # fmt: skip
        routed = gateway_pb2_grpc.GatewayServiceStub(channel).RouteMessage(ROUTE, metadata=AUTH, timeout=30)
        assert routed.queue
    https = ssl.create_default_context(cafile=str(cert))
    request = urllib.request.Request(
        f"https://127.0.0.1:{gateway.http_port}/v1/route-message",
        data=json.dumps({"message": "refund please"}).encode(),
        headers={"x-api-key": API_KEY},
    )
    with urllib.request.urlopen(request, context=https, timeout=30) as response:
        assert json.loads(response.read())["queue"]
    with pytest.raises(grpc.RpcError), grpc.insecure_channel(gateway.address) as plain:  # plaintext is refused
        gateway_pb2_grpc.GatewayServiceStub(plain).RouteMessage(ROUTE, metadata=AUTH, timeout=5)
    # The load generator speaks TLS too.
    report = load_report("--target", gateway.address, "--rpc", "route-message", "--concurrency", "2", "--duration",
                         "1", "--api-key", API_KEY, "--tls-ca-file", str(cert))  # fmt: skip
    assert report["requests_ok"] > 0 and set(report["codes"]) == {"OK"}
