"""The backends trust only the gateway: a classifier that requires mutual TLS, the gateway connecting with its
client certificate (and renewing its channel when that certificate is rotated), and the probe helper over TLS."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.core.tls import channel_credentials
from tests.certificates import Authority
from tests.e2e.conftest import API_KEY, Launcher

pytestmark = pytest.mark.e2e

AUTH = (("x-api-key", API_KEY),)
CLASSIFIER_HEALTH = "ecomserve.classifier.v1.ClassifierService"


def probe(address: str, *tls: str) -> int:
    command = [sys.executable, "-m", "services.probe", address, CLASSIFIER_HEALTH, *tls]
    return subprocess.run(command, capture_output=True, timeout=60).returncode


def test_the_gateway_reaches_a_mutual_tls_classifier_and_renews_its_certificate(
    launcher: Launcher, model_repo: Path, tmp_path: Path
) -> None:
    authority = Authority.create("ecomserve test CA")
    ca = str(authority.write(tmp_path / "ca.crt"))
    cert, key = (str(path) for path in authority.issue(tmp_path / "tls.crt", tmp_path / "tls.key", "classifier"))
    gateway_cert, gateway_key = authority.issue(tmp_path / "gw.crt", tmp_path / "gw.key", "gateway", client=True)
    classifier = launcher.start(
        "services.classifier",
        *("--models", str(model_repo), "--model-names", "intent"),
        *("--tls-cert-file", cert, "--tls-key-file", key, "--tls-client-ca-file", ca),
    )
    client = ("--tls-ca-file", ca, "--tls-cert-file", str(gateway_cert), "--tls-key-file", str(gateway_key))
    classifier.wait_serving(credentials=channel_credentials(ca, str(gateway_cert), str(gateway_key)))
    assert probe(classifier.address, *client) == 0
    assert probe(classifier.address, "--tls-ca-file", ca) == 1  # no client certificate
    assert probe(classifier.address) == 1  # plaintext

    backend_tls = ("--backend-tls-ca-file", ca, "--backend-tls-cert-file", str(gateway_cert))
    # The caller below sends as fast as it can: no rate limit, so that every failure is the TLS renewal's.
    no_limit = ("--rate-limit-per-s", "0")
    gateway = launcher.gateway([classifier], None, *backend_tls, "--backend-tls-key-file", str(gateway_key), *no_limit)
    gateway.wait_serving()
    outcomes: list[object] = []
    stop = threading.Event()

    def keep_routing() -> None:
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            while not stop.is_set():
                try:
                    outcomes.append(stub.RouteMessage(gateway_pb2.RouteMessageRequest(message="refund"), metadata=AUTH))
                except grpc.RpcError as error:
                    outcomes.append(error)

    caller = threading.Thread(target=keep_routing)
    caller.start()
    try:
        time.sleep(1.0)
        authority.issue(gateway_cert, gateway_key, "gateway", client=True)  # cert-manager renews it in place
        deadline = time.monotonic() + 20
        while "new channel with the TLS files re-read" not in gateway.log.read_text():
            assert time.monotonic() < deadline, "the gateway did not pick up its renewed certificate"
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        caller.join()
    failed = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert outcomes and not failed, failed[:3]
