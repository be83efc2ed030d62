"""deploy/ against running services: every metric name that the alert rules, the dashboard and the autoscaling
rules query is one the services really export (scraped from their /metrics after real traffic), and every health
name the Kubernetes probes and compose health checks ask answers SERVING."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from ecomserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from services.dev.launcher import free_port
from tests.deploy.manifests import DEPLOY, component_of, of_kind, render
from tests.e2e.conftest import API_KEY, GENERATOR_MODEL, Launcher, Process

pytestmark = pytest.mark.e2e

AUTH = (("x-api-key", API_KEY),)
METRIC = re.compile(r"\becomserve_[a-z0-9_]+")
RECORDED = re.compile(r"\becomserve:[a-z0-9_:]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}


class Running:
    def __init__(self, processes: dict[str, Process], metrics_ports: dict[str, int]) -> None:
        self.processes = processes
        self.metrics_ports = metrics_ports


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, model_repo: Path, generator_repo: Path) -> Iterator[Running]:
    """The three services with /metrics on, after a classification and a streamed reply through the gateway."""
    launcher = Launcher(tmp_path_factory.mktemp("monitoring"))
    ports = {name: free_port() for name in ("classifier", "generator", "gateway")}
    try:
        classifier = launcher.start(
            "services.classifier", "--models", str(model_repo), "--model-names", "intent",
            "--metrics-port", str(ports["classifier"]),
        )  # fmt: skip
        generator = launcher.start(
            "services.generator", "--models", str(generator_repo), "--model-names", GENERATOR_MODEL,
            "--metrics-port", str(ports["generator"]),
        )  # fmt: skip
        gateway = launcher.gateway([classifier], generator, "--metrics-port", str(ports["gateway"]))
        for process in (classifier, generator, gateway):
            process.wait_serving()
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            stub.RouteMessage(gateway_pb2.RouteMessageRequest(message="where is my order?"), metadata=AUTH, timeout=30)
            draft = gateway_pb2.DraftReplyRequest(message="My parcel is late", max_words=10)
            assert list(stub.DraftReply(draft, metadata=AUTH, timeout=60))
        yield Running({"classifier": classifier, "generator": generator, "gateway": gateway}, ports)
    finally:
        launcher.stop_all()


def exported_names(port: int) -> set[str]:
    """Every series name a /metrics page offers: family names and, by type, their sample suffixes."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def queried_texts() -> dict[str, str]:
    """Every PromQL expression and metric reference of deploy/, by where it comes from."""
    texts: dict[str, str] = {}
    rules = yaml.safe_load((DEPLOY / "monitoring" / "rules.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            texts[f"rules.yaml {rule.get('record') or rule.get('alert')}"] = rule["expr"]
    dashboard = json.loads((DEPLOY / "monitoring" / "grafana" / "ecomserve.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            texts[f"dashboard {panel['title']!r} {target['refId']}"] = target["expr"]
    texts["dashboard variables"] = json.dumps(dashboard["templating"])
    adapter = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-adapter.yaml").read_text())
    for rule in adapter["rules"]["custom"]:
        texts[f"prometheus-adapter {rule['name']['as']}"] = rule["seriesQuery"] + " " + rule["name"]["as"]
    for hpa in of_kind(render("custom-metrics"), "HorizontalPodAutoscaler").values():
        for metric in hpa["spec"]["metrics"]:
            texts[f"custom-metrics HPA {hpa['metadata']['name']}"] = metric["pods"]["metric"]["name"]
    return texts


def test_every_metric_that_deploy_queries_is_exported(running: Running) -> None:
    exported = set().union(*(exported_names(port) for port in running.metrics_ports.values()))
    recorded = set(RECORDED.findall((DEPLOY / "monitoring" / "rules.yaml").read_text()))
    texts = queried_texts()
    assert len(texts) > 30
    missing = {
        where: sorted(set(METRIC.findall(text)) - exported) for where, text in texts.items() if METRIC.search(text)
    }
    assert not {where: names for where, names in missing.items() if names}
    unrecorded = {where: sorted(set(RECORDED.findall(text)) - recorded) for where, text in texts.items()}
    assert not {where: names for where, names in unrecorded.items() if names}


def test_metrics_the_alerts_need_are_exported_by_the_right_services(running: Running) -> None:
    names = {service: exported_names(port) for service, port in running.metrics_ports.items()}
    for service in ("classifier", "generator", "gateway"):
        assert {"ecomserve_serving", "ecomserve_requests_total", "ecomserve_inflight_requests"} <= names[service]
    for backend in ("classifier", "generator"):
        assert {"ecomserve_queue_depth", "ecomserve_queue_capacity"} <= names[backend]
    assert "ecomserve_time_to_first_token_seconds_bucket" in names["generator"]
    assert {"ecomserve_backend_ready", "ecomserve_backend_request_duration_seconds_bucket"} <= names["gateway"]


def test_the_health_names_probes_ask_answer_serving(running: Running) -> None:
    docs = render("cpu")
    for deployment in of_kind(docs, "Deployment").values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        process = running.processes[component_of(container["command"]).name]
        with grpc.insecure_channel(process.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for kind in ("startup", "readiness", "liveness"):
                name = container[f"{kind}Probe"]["grpc"]["service"]
                answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, (process.name, kind, name)


def test_the_compose_health_check_command(running: Running) -> None:
    gateway = running.processes["gateway"]
    probe = [sys.executable, "-m", "services.probe", gateway.address]
    serving = subprocess.run([*probe, "ecomserve.gateway.v1.GatewayService"], capture_output=True, text=True)
    assert serving.returncode == 0 and "SERVING" in serving.stdout
    unknown = subprocess.run([*probe, "no.such.Service"], capture_output=True, text=True)
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
