"""TLS to the token endpoint is verified; a private CA is trusted only through caBundleRef."""

from __future__ import annotations

import pathlib
import ssl
from collections.abc import Iterator

import pytest
from kubernetes import client
from test_operator import CLIENT_SECRET, Env

__all__ = ["operator"]

from localcluster.pki import CertificateAuthority
from support.fixtures import operator
from support.operatorproc import OperatorProcess
from support.polling import wait_for
from support.tokenserver import TokenServer


@pytest.fixture(scope="module")
def private_ca() -> CertificateAuthority:
    return CertificateAuthority("tokensync-test-private-ca")


@pytest.fixture(scope="module")
def https_server(
    private_ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TokenServer]:
    pair = private_ca.issue("token-endpoint", server_hosts=("127.0.0.1",))
    d = tmp_path_factory.mktemp("tls")
    (d / "tls.crt").write_bytes(pair.cert_pem)
    (d / "tls.key").write_bytes(pair.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "tls.crt", d / "tls.key")
    with TokenServer(ssl_context=context) as server:
        yield server


@pytest.fixture
def tls_env(
    api_client: client.ApiClient,
    namespace: str,
    https_server: TokenServer,
    operator: OperatorProcess,
) -> Env:
    env = Env(api_client, namespace, https_server)
    env.client_secret()
    return env


def test_untrusted_certificate_is_refused(tls_env: Env) -> None:
    assert tls_env.server.url.startswith("https://")
    tls_env.credential()
    ready = tls_env.wait_ready(reason="TLSVerificationFailed")
    assert ready["status"] == "False"
    assert "caBundleRef" in ready["message"]
    assert tls_env.target() is None


@pytest.mark.parametrize("kind", ["ConfigMap", "Secret"])
def test_ca_bundle_from_a_config_map_or_secret(
    tls_env: Env, private_ca: CertificateAuthority, kind: str
) -> None:
    pem = private_ca.cert_pem.decode()
    meta = {"name": "private-ca"}
    if kind == "ConfigMap":
        tls_env.core.create_namespaced_config_map(
            tls_env.ns, {"metadata": meta, "data": {"ca.crt": pem}}
        )
    else:
        tls_env.core.create_namespaced_secret(
            tls_env.ns, {"metadata": meta, "stringData": {"ca.crt": pem}}
        )
    tls_env.credential(caBundleRef={"kind": kind, "name": "private-ca"})
    token = wait_for(tls_env.token, what="a token over verified TLS")
    assert tls_env.server.verify(token)
    assert tls_env.wait_ready()["status"] == "True"


def test_missing_ca_bundle_is_reported(tls_env: Env) -> None:
    tls_env.credential(caBundleRef={"name": "no-such-config-map"})
    ready = tls_env.wait_ready(reason="CABundleNotFound")
    assert "no-such-config-map" in ready["message"]
    assert CLIENT_SECRET not in ready["message"]


def test_pki_helper_writes_no_files(tmp_path: pathlib.Path) -> None:
    # The CA used above lives in memory only; nothing leaks into the test directory.
    CertificateAuthority().issue("x", server_hosts=("127.0.0.1",))
    assert list(tmp_path.iterdir()) == []
