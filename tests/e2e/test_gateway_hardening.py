"""The gateway against callers that send what they should not: a request id no backend can carry, bodies that are
too large or not UTF-8, undecodable gRPC messages, connections held open, guessed keys, rotated keys."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.dev.launcher import free_port
from services.gateway.auth import hash_key
from tests.e2e import http_client
from tests.e2e.conftest import API_KEY, Launcher, Process

pytestmark = pytest.mark.e2e

AUTH = (("x-api-key", API_KEY),)
ROUTE = {"message": "Where is my order?"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, model_repo: Path) -> Iterator[Process]:
    """One classifier behind a gateway whose HTTP limits are small enough to reach in a test."""
    processes = Launcher(tmp_path_factory.mktemp("hardening"))
    try:
        classifier = processes.classifier(model_repo)
        gateway = processes.gateway(
            [classifier],
            None,
            "--http-idle-timeout-s",
            "1",
            "--http-max-connections",
            "40",
            "--max-request-bytes",
            "65536",
            "--auth-failure-burst",
            "3",
            "--auth-failures-per-s",
            "0.01",
        )
        classifier.wait_serving()
        gateway.wait_serving()
        yield gateway
    finally:
        processes.stop_all()


def post(gateway: Process, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict, str]:
    """A raw POST (http.client sends header values as latin-1 bytes, as a careless client would)."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway.http_port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers={"x-api-key": API_KEY, **headers})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read() or b"null")
    finally:
        connection.close()


def test_a_poisoned_request_id_fails_no_other_caller(gateway: Process) -> None:
    """A non-ASCII id once broke every coalesced call it joined: now it is replaced at the edge."""
    poisoned = ["café", "a,b", "x" * 300, "two words", "new\tline"]

    def normal(index: int) -> int:
        return http_client.call(
            f"{gateway.http}/v1/route-message", ROUTE, API_KEY, **{"x-request-id": f"caller-{index}"}
        ).status

    def poisoning(index: int) -> tuple[int, str]:
        status, headers, _ = post(
            gateway,
            "/v1/route-message",
            b'{"message": "refund please"}',
            {"x-request-id": poisoned[index % len(poisoned)], "content-type": "application/json"},
        )
        return status, headers["x-request-id"]

    # Well under the fixture's 40 connections: the server counts a closed one until it has seen it close.
    with ThreadPoolExecutor(12) as pool:
        normals = pool.map(normal, range(400))
        poisonings = list(pool.map(poisoning, range(50)))
    assert set(normals) == {200}
    assert {status for status, _ in poisonings} == {200}
    assert all(request_id not in poisoned and request_id.isalnum() for _, request_id in poisonings)

    with grpc.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        _, call = stub.RouteMessage.with_call(
            gateway_pb2.RouteMessageRequest(message="refund"), metadata=(*AUTH, ("x-request-id", "a, b")), timeout=30
        )
    assert dict(call.trailing_metadata())["x-request-id"] not in ("a, b", "")


def test_an_oversized_body_gets_413_in_the_envelope(gateway: Process) -> None:
    status, headers, body = post(gateway, "/v1/route-message", b'{"message": "' + b"a" * 100_000 + b'"}', {})
    assert status == 413
    assert "65536 byte limit" in body["error"]["message"] and body["error"]["requestId"] == headers["x-request-id"]
    with grpc.insecure_channel(gateway.address) as channel:  # the gRPC limit is the same
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.RouteMessage(gateway_pb2.RouteMessageRequest(message="a" * 100_000), metadata=AUTH, timeout=30)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_bodies_that_are_not_utf8_json_are_refused_with_4xx(gateway: Process) -> None:
    status, _, body = post(gateway, "/v1/route-message", b'{"message": "caf\xe9"}', {})
    assert status == 400 and "UTF-8" in body["error"]["message"]
    status, _, body = post(gateway, "/v1/route-message", b"{}", {"content-type": "application/json; charset=nope"})
    assert status == 415 and "nope" in body["error"]["message"]
    status, _, body = post(gateway, "/v1/route-message", b"[" * 30_000, {})
    assert status == 400 and body["error"]["code"] == "INVALID_ARGUMENT"


def test_aiohttp_refusals_keep_their_status_in_the_envelope(gateway: Process) -> None:
    status, _, body = post(gateway, "/v1/no-such-operation", b"{}", {})
    assert status == 404 and body["error"]["code"] == "NOT_FOUND" and body["error"]["requestId"]
    reply = http_client.call(f"{gateway.http}/v1/route-message")  # GET
    assert reply.status == 405 and reply.body["error"]["code"] == "UNIMPLEMENTED"
    assert "POST" in reply.headers["allow"]
    with socket.create_connection(("127.0.0.1", gateway.http_port), timeout=10) as sock:
        sock.sendall(b"POST /v1/route-message HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n")
        assert b" 400 Bad Request" in sock.recv(1024).split(b"\r\n")[0]
    time.sleep(0.2)
    log = gateway.log.read_text()
    assert "Error handling request" in log and "Traceback" not in log and " ERROR " not in log


def test_invalid_utf8_in_a_grpc_string_field_is_invalid_argument(gateway: Process) -> None:
    raw = gateway_pb2.RouteMessageRequest(message="@@@@").SerializeToString().replace(b"@@@@", b"\xff\xfe\xfd\xfc")
    with grpc.insecure_channel(gateway.address) as channel:
        route = channel.unary_unary("/ecomserve.gateway.v1.GatewayService/RouteMessage")
        with pytest.raises(grpc.RpcError) as error:
            route(raw, metadata=AUTH, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "UTF-8" in error.value.details() and "RouteMessageRequest" in error.value.details()
        assert "DecodeError" not in error.value.details()
        # and the gateway serves the next call
        gateway_pb2_grpc.GatewayServiceStub(channel).RouteMessage(
            gateway_pb2.RouteMessageRequest(message="refund"), metadata=AUTH, timeout=30
        )


def closed_within(sock: socket.socket, seconds: float, trickle: bool = False) -> bool:
    """Whether the server closes `sock` within `seconds`; a trickling client sends one header byte at a time."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    sent = b"POST /v1/route-message HTTP/1.1\r\nhost: x\r\nx-slow: "
    while time.monotonic() < deadline:
        if trickle:
            try:
                sock.send(sent[:1] or b"a")
                sent = sent[1:]
            except OSError:
                return True
        try:
            if sock.recv(1024) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_idle_and_trickling_connections_are_closed(gateway: Process) -> None:
    with socket.create_connection(("127.0.0.1", gateway.http_port)) as idle:
        assert closed_within(idle, 5)
    with socket.create_connection(("127.0.0.1", gateway.http_port)) as slow:
        assert closed_within(slow, 5, trickle=True)


def test_connections_past_the_cap_get_503_and_the_rest_are_served(gateway: Process) -> None:
    held = [socket.create_connection(("127.0.0.1", gateway.http_port)) for _ in range(40)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", gateway.http_port), timeout=5) as extra:
            assert extra.recv(1024).startswith(b"HTTP/1.1 503")
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    assert http_client.call(f"{gateway.http}/v1/route-message", ROUTE, API_KEY).status == 200


def test_metrics_serve_many_connections_without_a_thread_each(launcher: Launcher, model_repo: Path) -> None:
    metrics_port = free_port()
    classifier = launcher.classifier(model_repo)
    gateway = launcher.gateway([classifier], None, "--metrics-port", str(metrics_port))
    classifier.wait_serving()
    gateway.wait_serving()

    def threads() -> int:
        status = Path(f"/proc/{gateway.child.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))

    before = threads()
    held = [socket.create_connection(("127.0.0.1", metrics_port)) for _ in range(60)]
    try:
        time.sleep(0.5)
        assert threads() <= before + 2
        scrape = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
        scrape.request("GET", "/metrics")
        assert b"ecomserve_requests_total" in scrape.getresponse().read()
    finally:
        for sock in held:
            sock.close()


def test_failed_authentications_are_limited_per_peer_but_valid_keys_pass(gateway: Process) -> None:
    statuses = [
        http_client.call(f"{gateway.http}/v1/route-message", ROUTE, "wrong-key-0123456789").status for _ in range(5)
    ]
    assert statuses[0] == 401 and statuses[-1] == 429
    assert http_client.call(f"{gateway.http}/v1/route-message", ROUTE, API_KEY).status == 200
    with grpc.insecure_channel(gateway.address) as channel:
        with pytest.raises(grpc.RpcError) as error:
            gateway_pb2_grpc.GatewayServiceStub(channel).RouteMessage(
                gateway_pb2.RouteMessageRequest(message="refund"), metadata=(("x-api-key", "nope"),), timeout=30
            )
    assert (
        error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "failed authentications" in error.value.details()
    )


def test_short_keys_are_refused_at_start(launcher: Launcher) -> None:
    process = launcher.start("services.gateway", "--api-keys", "me=short-key")
    assert process.child.wait(timeout=60) == 2
    assert "at least 16 characters" in process.log.read_text()


def test_a_rotated_keys_file_is_picked_up_without_a_restart(launcher: Launcher, model_repo: Path) -> None:
    classifier = launcher.classifier(model_repo)
    gateway = launcher.gateway([classifier], None)
    classifier.wait_serving()
    gateway.wait_serving()
    new_key = "rotated-key-0123456789"
    url = f"{gateway.http}/v1/route-message"
    assert http_client.call(url, ROUTE, new_key).status == 401
    (launcher.folder / "api-keys").write_text(f"tests={hash_key(new_key)}\n")
    deadline = time.monotonic() + 10
    while http_client.call(url, ROUTE, new_key).status != 200:
        assert time.monotonic() < deadline, "the rotated key was not accepted in time"
        time.sleep(0.2)
    assert http_client.call(url, ROUTE, API_KEY).status == 401
