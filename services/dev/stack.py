"""`make up` / `make down`: the whole stack in the background on this machine, with a Prometheus scraping it.

`up` starts classifier, generator and gateway (detached, logs and pids in the run folder), waits until each is
SERVING, starts Prometheus (`--prometheus`, default `prometheus` on the PATH) with a scrape config for the three
/metrics ports, writes an API key for the gateway to <run>/api-key and prints the ports. `down` stops what `up`
started (SIGTERM, then SIGKILL after the grace period). Ports are fixed so that dashboards and load runs find them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from export.defaults import EMBED, INTENT
from services.core.wire import DEFAULT_GENERATOR_MODEL as GENERATOR
from services.dev.launcher import spawn, wait_serving

STATE_FILE = "stack.json"


@dataclass
class Ports:
    gateway: int = 50050
    gateway_http: int = 8080
    gateway_metrics: int = 9100
    classifier: int = 50051
    classifier_metrics: int = 9101
    generator: int = 50052
    generator_metrics: int = 9102
    prometheus: int = 9090


# The project's recording and alert rules (as the deployments load them), so the README's alerts run locally too.
RULES_FILE = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "rules.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m services.dev.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--run-dir", type=Path, default=Path("run"), help="logs, pids, Prometheus data (default: run)")
    parser.add_argument("--models", type=Path, default=Path("models"), help="model repository (default: models)")
    parser.add_argument(
        "--prometheus", default=shutil.which("prometheus"), help="Prometheus binary (default: the one on the PATH)"
    )
    args = parser.parse_args()
    return up(args.run_dir, args.models, args.prometheus) if args.command == "up" else down(args.run_dir)


def up(run: Path, models: Path, prometheus: str | None, ports: Ports | None = None) -> int:
    if _running(run):
        print(f"the stack is already up (pids in {run / STATE_FILE}); `make down` stops it")
        return 0
    if prometheus is None or shutil.which(prometheus) is None:
        print("no prometheus binary (`make up` unpacks the Debian package `prometheus`)", file=sys.stderr)
        return 1
    ports = ports or Ports()
    run.mkdir(parents=True, exist_ok=True)
    api_key_file = run / "api-key"
    if not api_key_file.exists():
        api_key_file.write_text(secrets.token_urlsafe(24) + "\n")
        api_key_file.chmod(0o600)
    # The gateway reads its keys from a file: on a command line they would show in `ps`.
    keys_file = run / "api-keys"
    keys_file.touch(mode=0o600)
    keys_file.write_text(f"local={api_key_file.read_text().strip()}\n")
    _write_prometheus_config(run / "prometheus.yml", ports)
    host = ["--host", "127.0.0.1"]
    services = [
        ("classifier", ["--port", str(ports.classifier), "--metrics-port", str(ports.classifier_metrics),
                        "--models", str(models), "--model-names", f"{INTENT},{EMBED}"]),
        ("generator", ["--port", str(ports.generator), "--metrics-port", str(ports.generator_metrics),
                       "--models", str(models), "--model-names", GENERATOR]),
        ("gateway", ["--port", str(ports.gateway), "--http-port", str(ports.gateway_http),
                     "--metrics-port", str(ports.gateway_metrics),
                     "--classifier", f"127.0.0.1:{ports.classifier}", "--generator", f"127.0.0.1:{ports.generator}",
                     "--api-keys-file", str(keys_file)]),
    ]  # fmt: skip
    pids: dict[str, int] = {}
    try:
        for starting, flags in services:
            child = spawn(f"services.{starting}", *host, *flags, detached=True, log=run / f"{starting}.log")
            pids[starting] = child.pid
            _save(run, pids, ports)
            print(f"starting {starting} ...", flush=True)
            wait_serving(f"127.0.0.1:{flags[1]}", child, 300, starting)
        starting = "prometheus"
        with (run / "prometheus.log").open("ab") as log:
            pids["prometheus"] = subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={run / 'prometheus.yml'}",
                    f"--storage.tsdb.path={run / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{ports.prometheus}",
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            ).pid
        _save(run, pids, ports)
    except (RuntimeError, OSError) as error:
        print(f"make up failed: {error}", file=sys.stderr)
        failed_log = run / f"{starting}.log"
        cause = _last_error(failed_log)
        if cause:
            print(f"  {cause}", file=sys.stderr)
        print(f"(the whole log: {failed_log}; the others' in {run}/) stopping what started", file=sys.stderr)
        down(run)
        return 1
    print(
        f"\nthe stack is up (logs and pids in {run}/):\n"
        f"  gateway     gRPC 127.0.0.1:{ports.gateway}  HTTP http://127.0.0.1:{ports.gateway_http}  "
        f"metrics :{ports.gateway_metrics}\n"
        f"  classifier  gRPC 127.0.0.1:{ports.classifier}  metrics :{ports.classifier_metrics}\n"
        f"  generator   gRPC 127.0.0.1:{ports.generator}  metrics :{ports.generator_metrics}\n"
        f"  prometheus  http://127.0.0.1:{ports.prometheus}\n"
        f"  API key     in {api_key_file}\n\n"
        f'try:  curl -s -H "x-api-key: $(cat {api_key_file})" -d \'{{"message": "Where is my order?"}}\' '
        f"http://127.0.0.1:{ports.gateway_http}/v1/route-message\n"
        f"load: .venv/bin/python -m bench.load --target 127.0.0.1:{ports.gateway} --rpc route-message "
        f"--api-key $(cat {api_key_file}) --concurrency 8 --duration 60\n"
        f"stop: make down"
    )
    return 0


def down(run: Path, grace_s: float = 35.0) -> int:
    state = _load(run)
    if not state:
        print("the stack is not up")
        return 0
    for name, pid in reversed(list(state["pids"].items())):  # the gateway before its backends
        _terminate(name, pid, grace_s)
    (run / STATE_FILE).unlink(missing_ok=True)
    print("the stack is down")
    return 0


def _terminate(name: str, pid: int, grace_s: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            print(f"stopped {name}")
            return
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    print(f"killed {name} (still running after {grace_s:.0f} s)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A detached child of an exited `make up` is reaped by init; a zombie here means it has exited.
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(") ", 1)[-1].startswith("Z"))


def _running(run: Path) -> bool:
    state = _load(run)
    return state is not None and any(_alive(pid) for pid in state["pids"].values())


def _last_error(log: Path) -> str | None:
    """The last ERROR or CRITICAL line of a service's log: what stopped it, in its own words."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return next((line for line in reversed(lines) if " ERROR " in line or " CRITICAL " in line), None)


def _load(run: Path) -> dict[str, Any] | None:
    path = run / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _save(run: Path, pids: dict[str, int], ports: Ports) -> None:
    (run / STATE_FILE).write_text(json.dumps({"pids": pids, "ports": asdict(ports)}, indent=2))


def _write_prometheus_config(path: Path, ports: Ports) -> None:
    jobs = {
        "ecomserve-gateway": ports.gateway_metrics,
        "ecomserve-classifier": ports.classifier_metrics,
        "ecomserve-generator": ports.generator_metrics,
    }
    scrape = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        for job, port in jobs.items()
    )
    path.write_text(
        "# Written by `make up`: Prometheus scraping the local ecomserve stack and evaluating its alert rules.\n"
        "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n"
        f"rule_files:\n  - {RULES_FILE.resolve()}\n"
        "scrape_configs:\n" + scrape
    )


if __name__ == "__main__":
    sys.exit(main())
