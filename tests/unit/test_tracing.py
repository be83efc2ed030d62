"""A gRPC server span's outcome, recorded on a real SDK span: the status code always, an error status only for the
codes that mean the server failed."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import StatusCode

from services.core.tracing import record_grpc_code


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.OK, False),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, False),
        (grpc.StatusCode.CANCELLED, False),
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.INTERNAL, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
    ],
)
def test_the_code_is_recorded_and_only_server_faults_are_errors(code: grpc.StatusCode, error: bool) -> None:
    span = TracerProvider().get_tracer("test").start_span("/ecomserve.v1.Service/Method")
    record_grpc_code(span, code)
    span.end()
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == code.value[0]
    assert (span.status.status_code == StatusCode.ERROR) is error
