"""`python -m services.probe ADDRESS [SERVICE]`: exit 0 when the server at ADDRESS (HOST:PORT) reports SERVING on
grpc.health.v1 for SERVICE (default: the whole server), 1 otherwise. The health check of containers where no
native gRPC probe exists (docker compose), and of servers that serve TLS, which Kubernetes' native gRPC probes do
not speak (`--tls-ca-file`, and for mutual TLS a client certificate)."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.core.tls import channel_credentials


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.probe", description=__doc__)
    parser.add_argument("address", help="HOST:PORT of the gRPC server")
    parser.add_argument("service", nargs="?", default="", help="health service name, e.g. liveness")
    parser.add_argument("--timeout-s", type=float, default=3.0, help="how long to wait for the answer")
    parser.add_argument("--tls-ca-file", default="", help="connect over TLS, trusting this PEM CA")
    parser.add_argument("--tls-cert-file", default="", help="client certificate (PEM) for servers that require one")
    parser.add_argument("--tls-key-file", default="", help="private key of --tls-cert-file")
    parser.add_argument(
        "--tls-server-name", default="", help="name expected in the server's certificate (default: ADDRESS's host)"
    )
    args = parser.parse_args(argv)
    with probe_channel(args) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_s
            )
        except grpc.RpcError as error:
            print(f"{args.address} {args.service!r}: {error.code().name} {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(f"{args.address} {args.service!r}: {status}")
    return 0 if answer.status == health_pb2.HealthCheckResponse.SERVING else 1


def probe_channel(args: argparse.Namespace) -> grpc.Channel:
    if not args.tls_ca_file:
        return grpc.insecure_channel(args.address)
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    credentials = channel_credentials(args.tls_ca_file, args.tls_cert_file, args.tls_key_file)
    return grpc.secure_channel(args.address, credentials, options=options)


if __name__ == "__main__":
    sys.exit(main())
