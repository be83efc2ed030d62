"""The Kubernetes overlays and the compose file agree with the services they run: every setting is a real knob,
probes and ports are the ports the services listen on, drains fit the grace periods, policies and monitors name
ports that exist. The services' own config code reads the settings, as it would in the pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.core.server import LIVENESS_SERVICE
from services.gateway.config import PACKAGE_DIR
from services.gateway.templates import PromptTemplates
from tests.deploy.manifests import (
    COMPONENTS,
    OVERLAYS,
    component_of,
    compose,
    container_env,
    matches,
    of_kind,
    render,
)


def deployments(overlay: str) -> list[tuple[dict[str, Any], Any, Any]]:
    """(Deployment, component, effective config) for each Deployment of an overlay."""
    docs = render(overlay)
    result = []
    for deployment in of_kind(docs, "Deployment").values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        component = component_of(container["command"])
        result.append((deployment, component, component.config(container_env(docs, container))))
    return result


def pod_ports(deployment: dict[str, Any]) -> dict[str, int]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return {port["name"]: port["containerPort"] for container in containers for port in container.get("ports", [])}


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def test_every_overlay_runs_the_three_services() -> None:
    assert set(OVERLAYS) >= {"cpu", "gpu", "custom-metrics"}
    for overlay in OVERLAYS:
        assert sorted(component.name for _, component, _ in deployments(overlay)) == sorted(COMPONENTS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_is_a_knob_of_its_service(overlay: str) -> None:
    docs = render(overlay)
    for deployment, component, _ in deployments(overlay):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        settings = {name for name in container_env(docs, container) if not name.startswith("OTEL_")}  # OTel's own
        unknown = settings - component.knobs()
        assert not unknown, f"{overlay}: {component.name} is given settings it does not read: {sorted(unknown)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_ports_are_the_ones_the_services_listen_on(overlay: str) -> None:
    for deployment, component, config in deployments(overlay):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = pod_ports(deployment)
        assert ports["grpc"] == config.port
        assert ports["metrics"] == config.metrics_port
        assert config.metrics_host == "0.0.0.0"  # the service listens on loopback by default: Prometheus is a pod
        if component.name == "gateway":
            assert ports["http"] == config.http_port
        probes = {
            kind: probe_target(container[f"{kind}Probe"], config) for kind in ("startup", "readiness", "liveness")
        }
        assert all(port == config.port for port, _ in probes.values()), probes
        # Readiness is the service's own health name (SERVING only when it can answer); liveness must not fail
        # while a pod loads or drains, so it asks the name that stays SERVING.
        assert probes["readiness"][1] == component.health_service
        assert probes["liveness"][1] == LIVENESS_SERVICE
        assert probes["startup"][1] in (component.health_service, LIVENESS_SERVICE)


def probe_target(probe: dict[str, Any], config: Any) -> tuple[int, str]:
    """(port, health service) a probe asks: natively over plaintext gRPC, or through services.probe with the
    service's own certificate when it serves TLS (Kubernetes' gRPC probes speak no TLS)."""
    if not getattr(config, "tls_client_ca_file", ""):
        assert "grpc" in probe, probe
        return probe["grpc"]["port"], probe["grpc"]["service"]
    command = probe["exec"]["command"]
    assert command[:3] == ["python", "-m", "services.probe"], command
    flags = dict(zip(command[5::2], command[6::2], strict=True))
    assert flags["--tls-ca-file"] == config.tls_client_ca_file
    assert (flags["--tls-cert-file"], flags["--tls-key-file"]) == (config.tls_cert_file, config.tls_key_file)
    return int(command[3].rpartition(":")[2]), command[4]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_backends_that_require_client_certificates_are_reached_with_one(overlay: str) -> None:
    configs = {component.name: config for _, component, config in deployments(overlay)}
    backends = [configs["classifier"], configs["generator"]]
    mutual = [bool(backend.tls_client_ca_file) for backend in backends]
    assert len(set(mutual)) == 1, "both backends or neither serve mutual TLS"
    tls = configs["gateway"].backend_tls
    assert (tls is not None and bool(tls.cert_file)) == mutual[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_drain_fits_in_the_termination_grace_period(overlay: str) -> None:
    for deployment, component, config in deployments(overlay):
        spec = deployment["spec"]["template"]["spec"]
        pre_stop = spec["containers"][0].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert spec["terminationGracePeriodSeconds"] > pre_stop + config.grace_period_s, component.name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_reaches_every_backend_pod_through_a_headless_service(overlay: str) -> None:
    docs = render(overlay)
    services = of_kind(docs, "Service")
    by_component = {component.name: (deployment, config) for deployment, component, config in deployments(overlay)}
    _, gateway = by_component["gateway"]
    for backend, target in (("classifier", gateway.classifier), ("generator", gateway.generator)):
        deployment, config = by_component[backend]
        assert target.startswith("dns:///"), target
        name, port = target.removeprefix("dns:///").rsplit(":", 1)
        service = services[name]
        assert service["spec"]["clusterIP"] == "None", f"{name} must be headless for client-side balancing"
        assert matches(service["spec"]["selector"], pod_labels(deployment))
        assert int(port) == config.port
        assert [p["port"] for p in service["spec"]["ports"] if p["targetPort"] == "grpc"] == [config.port]
    gateway_service = services["gateway"]["spec"]
    assert gateway_service.get("clusterIP") != "None"
    assert {port["name"]: port["appProtocol"] for port in gateway_service["ports"]} == {
        "grpc": "kubernetes.io/h2c",
        "http": "http",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_policies_and_monitors_name_ports_that_exist(overlay: str) -> None:
    docs = render(overlay)
    pods = [(pod_labels(deployment), pod_ports(deployment)) for deployment, _, _ in deployments(overlay)]

    def selected(selector: dict[str, str]) -> list[dict[str, int]]:
        chosen = [ports for labels, ports in pods if matches(selector, labels)]
        assert chosen, f"selector {selector} selects no pod"
        return chosen

    for service in of_kind(docs, "Service").values():
        for ports in selected(service["spec"]["selector"]):
            assert {port["targetPort"] for port in service["spec"]["ports"]} <= set(ports)
    for policy in of_kind(docs, "NetworkPolicy").values():
        named = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
        for ports in selected(policy["spec"]["podSelector"]["matchLabels"]):
            assert named <= set(ports), policy["metadata"]["name"]
    for monitor in of_kind(docs, "PodMonitor").values():
        selected_pods = selected(monitor["spec"]["selector"]["matchLabels"])
        assert len(selected_pods) == len(pods), "the PodMonitor must scrape every service"
        for ports in selected_pods:
            assert {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]} <= set(ports)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_non_root_on_a_read_only_root_with_their_models_copied_in(overlay: str) -> None:
    for deployment, component, config in deployments(overlay):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
        if component.name == "gateway":
            continue
        mounts = {mount["mountPath"]: mount for mount in spec["containers"][0]["volumeMounts"]}
        assert mounts[config.models]["readOnly"] is True
        (copy,) = spec["initContainers"]
        # The init container copies exactly the models the service is told to serve.
        assert tuple(copy["args"]) == config.model_names
        assert {m["name"] for m in copy["volumeMounts"]} == {mounts[config.models]["name"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_an_autoscaler_and_a_disruption_budget(overlay: str) -> None:
    docs = render(overlay)
    autoscalers = {
        hpa["spec"]["scaleTargetRef"]["name"]: hpa for hpa in of_kind(docs, "HorizontalPodAutoscaler").values()
    }
    budgets = of_kind(docs, "PodDisruptionBudget").values()
    for deployment, component, _ in deployments(overlay):
        name = deployment["metadata"]["name"]
        assert "replicas" not in deployment["spec"], f"{name}: the autoscaler owns the replica count"
        assert autoscalers[name]["spec"]["minReplicas"] >= 1
        assert [b for b in budgets if matches(b["spec"]["selector"]["matchLabels"], pod_labels(deployment))]
        metrics = autoscalers[name]["spec"]["metrics"]
        if overlay == "custom-metrics":
            assert {m["type"] for m in metrics} == {"Pods"}, component.name
        else:
            assert [m["resource"]["name"] for m in metrics] == ["cpu"]


def test_the_gpu_overlay_puts_the_backends_on_gpus_and_the_gateway_on_cpu() -> None:
    for deployment, component, config in deployments("gpu"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        if component.name == "gateway":
            assert gpus is None and "ecomserve-cpu" in container["image"]
        else:
            assert gpus == 1 and config.device == "cuda" and "ecomserve-gpu" in container["image"]
            assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_compose_runs_the_same_services_with_real_settings() -> None:
    services = compose()["services"]
    for name, component in COMPONENTS.items():
        service = services[name]
        assert component_of(service["command"]) is component
        environ = {key: str(value) for key, value in service.get("environment", {}).items()}
        assert set(environ) <= component.knobs()
        environ.pop("ECOMSERVE_GATEWAY_API_KEYS", None)  # a ${...} the user sets
        config = component.config(environ)
        # The health check asks the service's own readiness name on the port it listens on.
        assert service["healthcheck"]["test"][1:] == [
            "python",
            "-m",
            "services.probe",
            f"127.0.0.1:{config.port}",
            component.health_service,
        ]
        assert config.metrics_host == "0.0.0.0"  # Prometheus scrapes from its own container
        if name == "gateway":
            assert config.classifier == f"dns:///classifier:{COMPONENTS['classifier'].config({}).port}"
            assert config.generator == f"dns:///generator:{COMPONENTS['generator'].config({}).port}"


def test_the_kserve_runtime_runs_the_classifier_with_both_v2_protocols_on_the_ports_kserve_routes_to() -> None:
    docs = render("kserve")
    [runtime] = of_kind(docs, "ServingRuntime").values()
    [service] = of_kind(docs, "InferenceService").values()
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    container = runtime["spec"]["containers"][0]
    component = component_of(container["command"])
    assert component.name == "classifier"
    config = component.config({e["name"]: e["value"] for e in container["env"]})  # only real knobs parse
    assert config.models == "/mnt/models"  # where KServe's storage initializer puts the storageUri
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"h2c": config.port}
    assert config.http_port == 8080  # REST v2, for an InferenceService that picks it
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] == "grpc-v2"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_reads_routing_and_templates_from_config_maps_that_start_as_its_defaults(
    overlay: str, tmp_path: Path
) -> None:
    """A prompt change is a ConfigMap change: the gateway's routing file and template folder are ConfigMap mounts
    (re-read when they change), holding what the image holds until someone edits them."""
    docs = render(overlay)
    config_maps = of_kind(docs, "ConfigMap")
    (gateway, _, config) = next(d for d in deployments(overlay) if d[1].name == "gateway")
    pod = gateway["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounted = {
        mount["mountPath"]: config_maps[volumes[mount["name"]]["configMap"]["name"]]["data"]
        for mount in pod["containers"][0]["volumeMounts"]
        if "configMap" in volumes[mount["name"]]
    }
    routing = Path(config.routing_file)
    assert mounted[str(routing.parent)][routing.name] == (PACKAGE_DIR / "routing.toml").read_text()

    templates = tmp_path / "templates"  # the ConfigMap as the pod sees it
    templates.mkdir()
    for name, text in mounted[config.templates].items():
        (templates / name).write_text(text)
    shipped, default = PromptTemplates.load(templates), PromptTemplates.load(PACKAGE_DIR / "templates")
    assert shipped.operations() == default.operations()
    for operation in default.operations():
        assert [t.version for t in shipped.versions(operation)] == [t.version for t in default.versions(operation)]
        for template in default.versions(operation):
            flat = f"{operation.replace('/', '.')}.v{template.version}.toml"
            assert (templates / flat).read_text() == (
                PACKAGE_DIR / "templates" / operation / f"v{template.version}.toml"
            ).read_text()
