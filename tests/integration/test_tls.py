"""TLS on the backends: mutual TLS admits only clients with a certificate from the configured CA, and a rotated
server certificate is used for new connections while open ones go on."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from ecomserve.classifier.v1 import classifier_pb2 as pb
from ecomserve.classifier.v1 import classifier_pb2_grpc

from services.core.tls import channel_credentials
from tests.certificates import Authority
from tests.integration.conftest import address_of

REQUEST = pb.ClassifyRequest(model="intent", texts=["where is my order"])
# Each test channel its own connections: a channel must not reuse another's TLS session.
OWN_CONNECTIONS = [("grpc.use_local_subchannel_pool", 1)]


async def classify(address: str, credentials: grpc.ChannelCredentials | None) -> pb.ClassifyResponse:
    if credentials is None:
        channel = grpc.aio.insecure_channel(address, options=OWN_CONNECTIONS)
    else:
        channel = grpc.aio.secure_channel(address, credentials, options=OWN_CONNECTIONS)
    async with channel:
        return await classifier_pb2_grpc.ClassifierServiceStub(channel).Classify(REQUEST, timeout=10)


async def test_mutual_tls_admits_only_the_gateways_certificate_and_follows_rotation(classifier, tmp_path: Path) -> None:
    authority = Authority.create("ecomserve test CA")
    ca = authority.write(tmp_path / "ca.crt")
    cert, key = authority.issue(tmp_path / "tls.crt", tmp_path / "tls.key", "classifier")
    gateway_cert, gateway_key = authority.issue(tmp_path / "gw.crt", tmp_path / "gw.key", "gateway", client=True)
    stranger = Authority.create("someone else")
    stranger_cert, stranger_key = stranger.issue(tmp_path / "s.crt", tmp_path / "s.key", "gateway", client=True)
    gateway = channel_credentials(str(ca), str(gateway_cert), str(gateway_key))
    async with classifier(tls_cert_file=str(cert), tls_key_file=str(key), tls_client_ca_file=str(ca)) as app:
        address = address_of(app.server)
        assert (await classify(address, gateway)).results
        for refused in (
            None,  # plaintext
            channel_credentials(str(ca)),  # TLS without a client certificate
            channel_credentials(str(ca), str(stranger_cert), str(stranger_key)),  # signed by another CA
        ):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await classify(address, refused)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE

        # cert-manager renews the certificate in place, here from a new CA so that the change shows.
        async with grpc.aio.secure_channel(address, gateway, options=OWN_CONNECTIONS) as open_channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(open_channel)
            assert (await stub.Classify(REQUEST, timeout=10)).results
            renewed = Authority.create("renewed CA")
            renewed.issue(cert, key, "classifier")
            assert (await stub.Classify(REQUEST, timeout=10)).results  # the open connection goes on
        new_ca = renewed.write(tmp_path / "new-ca.crt")
        assert (await classify(address, channel_credentials(str(new_ca), str(gateway_cert), str(gateway_key)))).results
        with pytest.raises(grpc.aio.AioRpcError):  # new connections present the renewed certificate
            await classify(address, gateway)
