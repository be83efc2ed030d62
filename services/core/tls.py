"""TLS from PEM files that may be rotated in place (cert-manager, a Kubernetes Secret): the gRPC servers re-read
their certificate for the next handshake after the files change, so calls in flight on existing connections go on.

`server_credentials` serves TLS, and mutual TLS when a client CA is given (only clients with a certificate that CA
signed may connect: the backends trust only the gateway). `channel_credentials` is the client side.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc

log = logging.getLogger(__name__)

FileVersion = tuple[float, int, int] | None


def file_version(path: str) -> FileVersion:
    """What tells that a file changed: modification time, size and inode (None while it is missing)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime, stat.st_size, stat.st_ino


async def watch_files(
    paths: Sequence[str] | Callable[[], Sequence[str]],
    on_change: Callable[[], Awaitable[None] | None],
    *,
    poll_s: float,
    now: asyncio.Event,
) -> None:
    """Call `on_change` whenever one of `paths` changes (checked every poll_s) or `now` is set (SIGHUP); until
    cancelled. `paths` may be a function, for a folder whose files come and go. A failing `on_change` is logged
    and the next change tried again."""
    current = paths if callable(paths) else lambda: paths
    seen = {path: file_version(path) for path in current()}
    while True:
        try:
            await asyncio.wait_for(now.wait(), poll_s)
        except TimeoutError:
            pass
        versions = {path: file_version(path) for path in current()}
        if versions == seen and not now.is_set():
            continue
        now.clear()
        seen = versions
        try:
            result = on_change()
            if result is not None:
                await result
        except (OSError, ValueError) as error:
            log.error("%s changed but could not be reloaded; what was loaded stays: %s", ", ".join(seen), error)


@dataclass(frozen=True)
class TlsFiles:
    """A certificate chain and its key, and optionally the CA that client certificates must be signed by."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""

    @property
    def paths(self) -> list[str]:
        return [path for path in (self.cert_file, self.key_file, self.client_ca_file) if path]

    def read(self) -> grpc.ServerCertificateConfiguration:
        with open(self.cert_file, "rb") as cert, open(self.key_file, "rb") as key:
            pair = (key.read(), cert.read())
        if not pair[0] or not pair[1]:
            raise ValueError(f"{self.cert_file} or {self.key_file} is empty")
        ca = None
        if self.client_ca_file:
            with open(self.client_ca_file, "rb") as ca_file:
                ca = ca_file.read()
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)


def configured_credentials(cert_file: str, key_file: str, client_ca_file: str = "") -> grpc.ServerCredentials | None:
    """A service's --tls-* knobs as server credentials; None (plaintext) when no certificate is configured."""
    return server_credentials(TlsFiles(cert_file, key_file, client_ca_file)) if cert_file else None


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """TLS (mutual when files.client_ca_file) whose certificate is re-read, for new handshakes, after its files
    change. Raises OSError/ValueError when the files cannot be read at start."""
    loaded = [file_version(path) for path in files.paths]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # gRPC calls this before every handshake: None keeps the configuration in use.
        versions = [file_version(path) for path in files.paths]
        if versions == loaded:
            return None
        try:
            configuration = files.read()
        except (OSError, ValueError) as error:
            log.error("TLS files changed but could not be read; the previous certificate stays: %s", error)
            return None
        loaded[:] = versions
        log.info("TLS certificate reloaded from %s", files.cert_file)
        return configuration

    return grpc.dynamic_ssl_server_credentials(
        files.read(), fetch, require_client_authentication=bool(files.client_ca_file)
    )


def channel_credentials(ca_file: str, cert_file: str = "", key_file: str = "") -> grpc.ChannelCredentials:
    """Client TLS that trusts `ca_file` and, with cert_file and key_file, presents that client certificate."""

    def read(path: str) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as file:
            return file.read()

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca_file), private_key=read(key_file), certificate_chain=read(cert_file)
    )
