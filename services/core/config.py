"""Typed, frozen service configuration with a command-line flag and an ECOMSERVE_* environment twin per field.

Each service declares one frozen dataclass; every field carries its help text in `metadata["help"]`. Flags are
the field names in kebab case, the environment variable is ECOMSERVE_<COMPONENT>_<FIELD>; a flag beats the
environment, which beats the default. Nothing here runs at import time: `parse` is called once in __main__.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

C = TypeVar("C")


def knob(default: Any, help: str, *, secret: bool = False) -> Any:
    """A config field with its user-facing help text; a secret one is never printed, only counted."""
    return dataclasses.field(default=default, metadata={"help": help, "secret": secret})


def env_name(component: str, field_name: str) -> str:
    return f"ECOMSERVE_{component.upper()}_{field_name.upper()}"


def parse(
    cls: type[C],
    component: str,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    description: str = "",
    prog: str | None = None,
) -> C:
    """Build `cls` from flags, then ECOMSERVE_* variables, then defaults; exits with usage on bad values."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog=prog, description=description)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = hints[field.name]
        env = env_name(component, field.name)
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{field.metadata.get('help', '')} [env {env}; default {_show(field.default)}]"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=_converter(kind), default=None, help=help_text, metavar=_metavar(kind))
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = getattr(args, field.name)
        if value is None and env_name(component, field.name) in environ:
            raw = environ[env_name(component, field.name)]
            try:
                value = _converter(hints[field.name])(raw)
            except (TypeError, ValueError):
                parser.error(f"{env_name(component, field.name)}={raw!r}: not a valid {_metavar(hints[field.name])}")
        if value is not None:
            values[field.name] = value
    try:
        return cls(**values)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def describe(config: Any) -> str:
    """One line per field: what each service prints at start."""
    return "\n".join(f"  {f.name} = {_show_field(config, f)}" for f in dataclasses.fields(config))


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
EVENT_LOOPS = ("uvloop", "asyncio")


def one_of(names: tuple[str, ...]) -> str:
    """'a, b or c': the allowed values of a knob, for its help and its error."""
    return f"{', '.join(names[:-1])} or {names[-1]}"


def max_connection_age_knob() -> Any:
    """The max_connection_age_s knob every service has (checked by require_server_knobs)."""
    return knob(
        300.0,
        "close client connections after this long (they reconnect at once and re-resolve DNS, so new replicas get "
        "traffic; 0: never)",
    )


def metrics_host_knob() -> Any:
    """The metrics_host knob every service has: /metrics stays on loopback unless the deployment opens it."""
    return knob(
        "127.0.0.1",
        "address of the /metrics listener (0.0.0.0 for a Prometheus on another host or pod; the Kubernetes and "
        "compose configs set it)",
    )


def tls_cert_knob() -> Any:
    """The tls_cert_file knob of the backends (checked by require_tls_knobs)."""
    return knob(
        "",
        "PEM certificate chain: serve gRPC over TLS (with --tls-key-file); re-read for new connections when the "
        "files change",
    )


def tls_key_knob() -> Any:
    return knob("", "PEM private key of --tls-cert-file")


def tls_client_ca_knob() -> Any:
    return knob(
        "",
        "PEM CA certificate(s): mutual TLS, only clients presenting a certificate signed by them may connect (the "
        "gateway's --backend-tls-cert-file)",
    )


def require_tls_knobs(config: Any) -> None:
    require(
        bool(config.tls_cert_file) == bool(config.tls_key_file), "tls_cert_file and tls_key_file must be given together"
    )
    require(
        not config.tls_client_ca_file or bool(config.tls_cert_file),
        "tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file",
    )


def log_level_knob() -> Any:
    """The log_level knob every service has (checked by require_server_knobs)."""
    return knob("info", one_of(LOG_LEVELS))


def log_format_knob() -> Any:
    """The log_format knob every service has (checked by require_server_knobs)."""
    return knob(
        "text",
        "text, or json: one object per line (timestamp, level, service, logger, message, request_id, trace_id, and "
        "an access line's method, code, latency_ms, api_key, model, version, tokens_in, tokens_out)",
    )


def event_loop_knob() -> Any:
    """The event_loop knob every service has (checked by require_server_knobs)."""
    return knob(
        "uvloop",
        "uvloop (libuv's event loop: a tenth less of the loop thread's CPU per classifier call than asyncio's), or "
        "asyncio (the standard library's)",
    )


def require_server_knobs(config: Any) -> None:
    """The checks of the knobs every service has: port, metrics_port, max_connection_age_s, grace_period_s,
    log_level, log_format and event_loop (called from each config's __post_init__)."""
    require(0 <= config.port <= 65535, f"port must be 0..65535, got {config.port}")
    require(0 <= config.metrics_port <= 65535, f"metrics_port must be 0..65535, got {config.metrics_port}")
    require(config.max_connection_age_s >= 0, f"max_connection_age_s must be >= 0, got {config.max_connection_age_s}")
    require(config.grace_period_s >= 0, f"grace_period_s must be >= 0, got {config.grace_period_s}")
    require_one_of("log_level", config.log_level, LOG_LEVELS)
    require_one_of("log_format", config.log_format, LOG_FORMATS)
    require_one_of("event_loop", config.event_loop, EVENT_LOOPS)


def require(condition: bool, message: str) -> None:
    """Validation helper for __post_init__: the message names the field and what it must be."""
    if not condition:
        raise ValueError(message)


def require_one_of(field: str, value: str, names: tuple[str, ...]) -> None:
    require(value in names, f"{field} must be {one_of(names)}, got {value!r}")


def _converter(kind: Any) -> Any:
    if kind is bool:
        return _to_bool
    if typing.get_origin(kind) is tuple:
        return _to_tuple
    return kind


def _to_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _to_tuple(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _metavar(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        return "A,B,..."
    return getattr(kind, "__name__", str(kind)).upper()


def _show_field(config: Any, field: dataclasses.Field[Any]) -> str:
    value = getattr(config, field.name)
    if field.metadata.get("secret") and value:
        return f"({len(value) if isinstance(value, tuple) else 1} set, not shown)"
    return _show(value)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "(all)"
    return str(value)
