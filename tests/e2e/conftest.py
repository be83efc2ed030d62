"""The whole stack as subprocesses on loopback: classifier replicas, a generator and the gateway, over tiny models.

Children log to files under the test's temporary folder; a child that dies while starting fails the test with the
tail of its log; every child is stopped when its fixture ends.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from ecomserve.gateway.v1 import gateway_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from services.dev.launcher import free_port, spawn, stop, wait_serving
from services.gateway.auth import hash_key

README = Path(__file__).resolve().parents[2] / "README.md"
API_KEY = "test-key-1-0123456789"
OTHER_KEY = "test-key-2-0123456789"
ROUTES = {"order_status": "orders", "refund": "refunds", "human": "human_agent"}
GENERATOR_MODEL = "llama"


@dataclass
class Process:
    name: str
    child: subprocess.Popen[bytes]
    port: int
    log: Path
    http_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def wait_serving(self, timeout_s: float = 120.0, credentials: grpc.ChannelCredentials | None = None) -> Process:
        try:
            wait_serving(self.address, self.child, timeout_s, self.name, credentials)
        except RuntimeError as error:
            raise RuntimeError(f"{error}\n--- {self.log} ---\n{self.log.read_text()[-3000:]}") from None
        return self

    def stop(self) -> None:
        stop(self.child)

    def kill(self) -> None:
        self.child.kill()
        self.child.wait()


@dataclass
class Launcher:
    """Starts services as children (`python -m services.<name>`); stops all of them at the end."""

    folder: Path
    children: list[Process] = field(default_factory=list)

    def start(self, module: str, *flags: str, port: int | None = None, http: bool = False) -> Process:
        port = port or free_port()
        http_port = free_port() if http else 0
        name = f"{module.rsplit('.', 1)[-1]}-{port}"
        log = self.folder / f"{name}.log"
        listen = ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0"]
        if http:
            listen += ["--http-port", str(http_port)]
        process = Process(name, spawn(module, *listen, *flags, log=log), port, log, http_port)
        self.children.append(process)
        return process

    def classifier(self, models: Path, port: int | None = None) -> Process:
        return self.start("services.classifier", "--models", str(models), "--model-names", "intent", port=port)

    def generator(self, models: Path, port: int | None = None) -> Process:
        return self.start("services.generator", "--models", str(models), "--model-names", GENERATOR_MODEL, port=port)

    def api_keys_file(self) -> Path:
        """A keys file with API_KEY (as its hash) and OTHER_KEY (as is)."""
        keys = self.folder / "api-keys"
        keys.write_text(f"# test keys\ntests={hash_key(API_KEY)}\nother={OTHER_KEY}\n")
        return keys

    def gateway(self, classifiers: list[Process], generator: Process | None, *flags: str) -> Process:
        keys = self.api_keys_file()
        routing = self.folder / "routing.toml"
        queues = "\n".join(f'{label} = "{queue}"' for label, queue in ROUTES.items())
        routing.write_text(f'model = "intent"\ntop_k = 3\nmin_score = 0.0\n[queues]\n{queues}\n')
        return self.start(
            "services.gateway",
            "--classifier",
            ",".join(c.address for c in classifiers),
            "--generator",
            generator.address if generator else "",
            "--generator-model",
            GENERATOR_MODEL,
            "--api-keys-file",
            str(keys),
            "--routing-file",
            str(routing),
            *flags,
            http=True,
        )

    def stop_all(self) -> None:
        for process in self.children:
            process.stop()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    processes = Launcher(tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


@dataclass
class Stack:
    classifiers: list[Process]
    generator: Process
    gateway: Process


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_repo: Path, generator_repo: Path) -> Iterator[Stack]:
    """Two classifier replicas, one generator and a gateway in front of them, shared by a test module."""
    processes = Launcher(tmp_path_factory.mktemp("stack"))
    try:
        classifiers = [processes.classifier(model_repo), processes.classifier(model_repo)]
        generator = processes.generator(generator_repo)
        gateway = processes.gateway(classifiers, generator)
        for process in [*classifiers, generator, gateway]:
            process.wait_serving()
        yield Stack(classifiers, generator, gateway)
    finally:
        processes.stop_all()


@pytest.fixture
def gateway_stub(stack: Stack) -> Iterator[gateway_pb2_grpc.GatewayServiceStub]:
    with grpc.insecure_channel(stack.gateway.address) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


def metric_value(metrics_port: int, name: str, **labels: str) -> float:
    """A metric summed over the series that carry `labels`, scraped from a service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def finished_sequences(metrics_port: int, **finish_reason: str) -> float:
    """The generator's count of sequences that ended (for one `finish_reason=...`, or for any reason)."""
    return metric_value(metrics_port, "ecomserve_finished_sequences_total", **finish_reason)


def cancelled_sequences(metrics_port: int) -> float:
    """The generator's count of sequences that ended cancelled (their caller went away)."""
    return finished_sequences(metrics_port, finish_reason="cancelled")


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll `condition` until it holds; fail saying `what` did not happen within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def load_report(*args: str) -> dict:
    """`python -m bench.load ARGS` in a process of its own (grpc.aio in the test process stays on one event loop),
    its JSON report."""
    ran = subprocess.run(
        [sys.executable, "-m", "bench.load", "--warmup", "0", *args], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    return json.loads(ran.stdout)


def readme_json_requests() -> list[tuple[str, dict]]:
    """The README's JSON examples of the gateway's routes: (path, body) of each "`POST /v1/...`:" block."""
    blocks = re.findall(r"^`POST (/v1/[a-z-]+)`:\n```json\n(.*?)^```$", README.read_text(), re.DOTALL | re.M)
    return [(path, json.loads(body)) for path, body in blocks]
