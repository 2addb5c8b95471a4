"""The local model server's gRPC over TLS, configured as TF Serving is (--ssl_config_file).

The SSLConfig text proto holds PEM text: the server key and certificate, `custom_ca` (the roots
client certificates must chain to) and `client_verify` (mutual TLS: no valid client
certificate, no call). Certificates come from trustme, made in the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trustme
from tensorflow_serving.apis import get_model_status_pb2, model_pb2, model_service_pb2_grpc

from tests.serving.local_server_support import (
    MODEL_NAME,
    ServerProcess,
    build_tiny_saved_model,
    copy_version,
    eventually,
    start_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.model]


def _text_proto_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, authority: trustme.CA) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("tls")
    build_tiny_saved_model(root / "built", bias=0.0, temperature=1.0)
    copy_version(root / "built", root / "models" / MODEL_NAME, 1)
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    chain = "".join(pem.bytes().decode() for pem in certificate.cert_chain_pems)
    (root / "ssl.config").write_text(
        f"server_key: {_text_proto_string(certificate.private_key_pem.bytes().decode())}\n"
        f"server_cert: {_text_proto_string(chain)}\n"
        f"custom_ca: {_text_proto_string(authority.cert_pem.bytes().decode())}\n"
        "client_verify: true\n"
    )
    server = start_server(
        [
            f"--model_base_path={root / 'models' / MODEL_NAME}",
            f"--model_name={MODEL_NAME}",
            f"--ssl_config_file={root / 'ssl.config'}",
            "--rest_api_port=0",
        ],
        root / "server.log",
    )
    try:
        yield server
    finally:
        server.stop()


def _status(channel: grpc.Channel) -> get_model_status_pb2.GetModelStatusResponse:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=MODEL_NAME))
    return stub.GetModelStatus(request, timeout=5)


def _channel(server: ServerProcess, authority: trustme.CA, client: trustme.LeafCert | None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=authority.cert_pem.bytes(),
        private_key=client.private_key_pem.bytes() if client else None,
        certificate_chain=b"".join(p.bytes() for p in client.cert_chain_pems) if client else None,
    )
    return grpc.secure_channel(server.grpc_address, credentials)


def test_a_client_with_a_certificate_from_the_ca_is_served(
    tls_server: ServerProcess, authority: trustme.CA
) -> None:
    with _channel(tls_server, authority, authority.issue_cert("gateway@aidetect")) as channel:
        response = eventually(lambda: _status(channel), "status over mutual TLS", tls_server)
    assert response.model_version_status[0].version == 1


@pytest.mark.parametrize("client", ["no-certificate", "other-ca", "plaintext"])
def test_clients_without_a_valid_certificate_are_refused(
    tls_server: ServerProcess, authority: trustme.CA, client: str
) -> None:
    with _channel(tls_server, authority, authority.issue_cert("gateway@aidetect")) as channel:
        eventually(lambda: _status(channel), "status over mutual TLS", tls_server)
    if client == "plaintext":
        channel = grpc.insecure_channel(tls_server.grpc_address)
    else:
        channel = _channel(
            tls_server, authority, None if client == "no-certificate" else trustme.CA().issue_cert("x")
        )
    with channel, pytest.raises(grpc.RpcError) as refused:
        _status(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_bad_ssl_config_stops_the_start_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "ssl.config").write_text('server_key: "only a key"\nclient_verify: true\n')
    server = start_server(
        [
            f"--model_base_path={tmp_path}",
            f"--ssl_config_file={tmp_path / 'ssl.config'}",
            "--rest_api_port=0",
        ],
        tmp_path / "server.log",
    )
    assert server.process.wait(timeout=60) == 1
    assert "needs server_key and server_cert" in server.log()
