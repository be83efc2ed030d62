"""Logging of every service: text or JSON lines (`--log-format`), each record carrying the request id and trace id
of the call it was logged in, and one access-log line per call (method, code, latency, API key name, model and
version, tokens in and out).

What a call's access line says is gathered while the call runs: the transport opens a CallLog (InflightCalls.begin)
and whoever learns a fact notes it (`note`, `add_tokens`): the gateway's admission the API key's name, a model
registry the model and version, the generator the tokens. Request and prompt texts are never logged.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import re
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.core import metrics, tracing

LOG_FORMATS = ("text", "json")
ACCESS_LOGGER = "ecomserve.access"
ACCESS = logging.getLogger(ACCESS_LOGGER)
# W3C trace context: version-traceid-parentid-flags, the trace id 32 lower-case hex digits, not all zero.
TRACEPARENT = re.compile(r"[0-9a-f]{2}-(?!0{32})([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_QUEUED_RECORDS = 10_000


@dataclass
class CallLog:
    """One call in flight, as its access line will tell it."""

    started: float
    request_id: str = ""
    traceparent: str = ""  # the caller's, when well formed: passed on to the backends with the call
    trace_id: str = ""
    api_key: str = ""
    model: str = ""
    version: int = 0
    tokens_in: int = 0
    tokens_out: int = 0


CURRENT_CALL: ContextVar[CallLog | None] = ContextVar("ecomserve_call", default=None)


def open_call(request_id: str = "", traceparent: str | None = None) -> CallLog:
    """Start the CallLog of the call running in this context (its task and the tasks it starts); a malformed
    `traceparent` is ignored."""
    match = TRACEPARENT.fullmatch(traceparent.strip().lower()) if traceparent else None
    call = CallLog(time.perf_counter(), request_id=request_id)
    if match:
        call.traceparent, call.trace_id = match.group(0), match.group(1)
    elif tracing.active():  # a trace the server span started
        call.trace_id = tracing.current_trace_id()
    CURRENT_CALL.set(call)
    return call


def current_traceparent() -> str:
    """The current call's W3C traceparent, "" when it came without one."""
    call = CURRENT_CALL.get()
    return call.traceparent if call else ""


def note(**facts: Any) -> None:
    """Record facts (request_id, api_key, model, version) on the current call's access line."""
    call = CURRENT_CALL.get()
    if call is not None:
        for name, value in facts.items():
            setattr(call, name, value)


def add_tokens(prompt: int, completion: int) -> None:
    """Count a generation's tokens on the current call (several generations of one call add up)."""
    call = CURRENT_CALL.get()
    if call is not None:
        call.tokens_in += prompt
        call.tokens_out += completion


class RefusalLines:
    """At most `per_s` access lines a second for calls refused or lost under load (the codes below come by the
    thousand a second under overload, when a line costs more than the refusal itself); the next line that is
    written says how many were left out. The request metrics count every call."""

    CODES = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED"})

    def __init__(self, per_s: int) -> None:
        self._per_s = per_s
        self._window_start = 0.0
        self._written = 0
        self.left_out = 0

    def allow(self, now: float) -> bool:
        if now - self._window_start >= 1.0:
            self._window_start, self._written = now, 0
        if self._written < self._per_s:
            self._written += 1
            return True
        self.left_out += 1
        return False


REFUSAL_LINES = RefusalLines(per_s=20)


def log_access(call: CallLog, method: str, code: str) -> None:
    now = time.perf_counter()
    if not ACCESS.isEnabledFor(logging.INFO) or (code in RefusalLines.CODES and not REFUSAL_LINES.allow(now)):
        return
    fields: dict[str, Any] = {"method": method, "code": code, "latency_ms": round((now - call.started) * 1000, 2)}
    if call.api_key:
        fields["api_key"] = call.api_key
    if call.model:
        fields["model"], fields["version"] = call.model, call.version
    if call.tokens_in or call.tokens_out:
        fields["tokens_in"], fields["tokens_out"] = call.tokens_in, call.tokens_out
    if REFUSAL_LINES.left_out:
        fields["refusals_not_logged"], REFUSAL_LINES.left_out = REFUSAL_LINES.left_out, 0
    text = " ".join(f"{name}={value}" for name, value in fields.items() if name not in ("method", "code"))
    ACCESS.info("%s %s %s", method, code, text, extra={"access": fields})


class CallContextFilter(logging.Filter):
    """Puts the current call's request id and trace id on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        call = CURRENT_CALL.get()
        record.request_id = call.request_id if call else ""
        record.trace_id = call.trace_id if call else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC, ISO 8601), level, service, logger, message, request_id,
    trace_id, an access line's fields, and the exception's traceback when there is one."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", "trace_id"):
            if value := getattr(record, name, ""):
                entry[name] = value
        entry.update(getattr(record, "access", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line, with the request id appended when the record was logged inside a call."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", "")
        return f"{line} [request {request_id}]" if request_id and "\n" not in line else line


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands a record, with its call's ids (CallContextFilter), to the writer thread without ever waiting: a log
    sink that does not keep up (a full pipe, a slow collector) must not stall the event loop. Formatting happens
    in that thread too, off the event loop. When the queue is full the record is dropped and counted."""

    def __init__(self, records: queue.Queue[logging.LogRecord], service: str) -> None:
        super().__init__(records)
        self._dropped = metrics.LOG_RECORDS_DROPPED.labels(service)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record  # formatted by the writer (our log calls pass immutable arguments)

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self._dropped.inc()


def configure_logging(level: str, log_format: str, service: str) -> None:
    """Records go through a bounded queue to one thread that formats and writes them to stderr (flushed at exit)."""
    # What no line shows is not gathered: the caller's file and line (a walk of the stack), thread and process.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    records: queue.Queue[logging.LogRecord] = queue.Queue(MAX_QUEUED_RECORDS)
    handler = DroppingQueueHandler(records, service)
    handler.addFilter(CallContextFilter())
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(JsonFormatter(service) if log_format == "json" else TextFormatter())
    listener = logging.handlers.QueueListener(records, writer)
    listener.start()
    atexit.register(listener.stop)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
