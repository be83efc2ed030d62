"""Write the Prometheus Operator's PrometheusRule from rules.yaml, the one source of the rules.

    python deploy/monitoring/prometheusrule.py          (re)write the PrometheusRule of
                                                        deploy/k8s/components/prometheus-operator/
    python deploy/monitoring/prometheusrule.py --check  exit 1 when that file is not what rules.yaml gives

Kustomize cannot wrap a file into a custom resource, so the PrometheusRule is generated and `make check-deploy`
checks that it is current.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "rules.yaml"
TARGET = HERE.parent / "k8s" / "components" / "prometheus-operator" / "prometheusrule.yaml"
HEADER = "# Generated from deploy/monitoring/rules.yaml by `make deploy-rules`: edit that file, not this one.\n"


class _BlockStrings(yaml.SafeDumper):
    """Multi-line strings (PromQL, descriptions) as literal blocks and indented sequences, so the generated file
    reads like the source and passes the same yamllint."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_BlockStrings.add_representer(str, _represent_str)


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    resource: dict[str, Any] = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "ecomserve"},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(resource, Dumper=_BlockStrings, sort_keys=False, width=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the file is current")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is not current: run `make deploy-rules`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
