"""services.core.logs without servers: the trace context a call's lines carry, JSON and text records, and the
access line's fields."""

from __future__ import annotations

import contextvars
import json
import logging

import pytest

from services.core import logs
from services.core.logs import (
    CallContextFilter,
    JsonFormatter,
    RefusalLines,
    TextFormatter,
    add_tokens,
    log_access,
    note,
    open_call,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("traceparent", "trace_id"),
    [
        (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
        (f"00-{TRACE.upper()}-00F067AA0BA902B7-01", TRACE),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", ""),  # an all-zero trace id is invalid
        (f"00-{TRACE}-00f067aa0ba902b7", ""),
        ("00-not-hex", ""),
        (None, ""),
    ],
)
def test_only_a_well_formed_traceparent_gives_a_trace_id(traceparent: str | None, trace_id: str) -> None:
    call = contextvars.copy_context().run(open_call, "r1", traceparent)
    assert call.trace_id == trace_id and bool(call.traceparent) == bool(trace_id)


def record_in_a_call(message: str) -> logging.LogRecord:
    record = logging.LogRecord("tests", logging.INFO, __file__, 1, message, None, None)
    CallContextFilter().filter(record)
    return record


def test_records_carry_the_calls_ids_in_json_and_text() -> None:
    def inside_a_call() -> tuple[str, str]:
        open_call("req-9", f"00-{TRACE}-00f067aa0ba902b7-01")
        record = record_in_a_call("hello")
        return JsonFormatter("classifier").format(record), TextFormatter().format(record)

    as_json, as_text = contextvars.copy_context().run(inside_a_call)
    entry = json.loads(as_json)
    assert entry["message"] == "hello" and entry["service"] == "classifier" and entry["level"] == "INFO"
    assert (entry["request_id"], entry["trace_id"]) == ("req-9", TRACE) and entry["timestamp"].endswith("+00:00")
    assert as_text.endswith("hello [request req-9]")
    outside = json.loads(JsonFormatter("classifier").format(record_in_a_call("bye")))
    assert "request_id" not in outside and "trace_id" not in outside


def test_the_access_line_adds_up_what_the_call_noted(caplog: pytest.LogCaptureFixture) -> None:
    def a_call() -> None:
        call = open_call("req-1")
        note(api_key="shop-a", model="llama", version=2)
        add_tokens(10, 4)
        add_tokens(10, 6)  # a second generation of the same call (marketing variants)
        log_access(call, "WriteMarketingCopy", "OK")

    with caplog.at_level(logging.INFO, logger="ecomserve.access"):
        contextvars.copy_context().run(a_call)
    (record,) = caplog.records
    fields = record.access  # type: ignore[attr-defined]
    assert fields["method"] == "WriteMarketingCopy" and fields["code"] == "OK" and fields["latency_ms"] >= 0
    assert (fields["api_key"], fields["model"], fields["version"]) == ("shop-a", "llama", 2)
    assert (fields["tokens_in"], fields["tokens_out"]) == (20, 10)


def test_refusals_get_a_limited_number_of_lines_and_the_next_line_counts_the_rest(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "REFUSAL_LINES", RefusalLines(per_s=3))

    def overload() -> None:
        call = open_call("req-1")
        for _ in range(10):
            log_access(call, "Classify", "RESOURCE_EXHAUSTED")
        log_access(call, "Classify", "OK")  # never limited

    with caplog.at_level(logging.INFO, logger="ecomserve.access"):
        contextvars.copy_context().run(overload)
    codes = [record.access["code"] for record in caplog.records]  # type: ignore[attr-defined]
    assert codes == ["RESOURCE_EXHAUSTED"] * 3 + ["OK"]
    assert caplog.records[-1].access["refusals_not_logged"] == 7  # type: ignore[attr-defined]
