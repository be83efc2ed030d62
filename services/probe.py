"""`python -m services.probe ADDRESS [SERVICE]`: exit 0 when the server at ADDRESS (HOST:PORT) reports SERVING on
grpc.health.v1 for SERVICE (default: the whole server), 1 otherwise. The health check of containers where no
native gRPC probe exists (docker compose); Kubernetes probes the same names natively."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.probe", description=__doc__)
    parser.add_argument("address", help="HOST:PORT of the gRPC server")
    parser.add_argument("service", nargs="?", default="", help="health service name, e.g. liveness")
    parser.add_argument("--timeout-s", type=float, default=3.0, help="how long to wait for the answer")
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.address) as channel:
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


if __name__ == "__main__":
    sys.exit(main())
