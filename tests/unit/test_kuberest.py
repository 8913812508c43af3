"""Requests by path through the official ApiClient (decision 0055), against a real HTTP
server on loopback: what goes on the wire, and how errors come back."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from tokensync import failures, kube, kuberest


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("v1", "secrets"), {}, "/api/v1/secrets"),
        (("v1", "secrets"), {"namespace": "ns"}, "/api/v1/namespaces/ns/secrets"),
        (("v1", "secrets"), {"namespace": "ns", "name": "a"}, "/api/v1/namespaces/ns/secrets/a"),
        (
            ("v1", "serviceaccounts"),
            {"namespace": "ns", "name": "sa", "subresource": "token"},
            "/api/v1/namespaces/ns/serviceaccounts/sa/token",
        ),
        (
            ("tokensync.dev/v1alpha1", "clientcredentials"),
            {"namespace": "ns", "name": "c", "subresource": "status"},
            "/apis/tokensync.dev/v1alpha1/namespaces/ns/clientcredentials/c/status",
        ),
        (
            ("apps/v1", "deployments"),
            {"namespace": "ns"},
            "/apis/apps/v1/namespaces/ns/deployments",
        ),
        # Names are whole segments: nothing in one can reach another path.
        (
            ("v1", "secrets"),
            {"namespace": "n/s", "name": "../a?b"},
            "/api/v1/namespaces/n%2Fs/secrets/..%2Fa%3Fb",
        ),
    ],
)
def test_paths(args: tuple[str, str], kwargs: dict[str, str], expected: str) -> None:
    assert kuberest.path(*args, **kwargs) == expected


class Recorded:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.reply: dict[str, Any] = {"kind": "Secret"}
        #: Answered in turn before ``reply``, when set.
        self.replies: list[dict[str, Any]] = []


@pytest.fixture
def server() -> Iterator[tuple[str, Recorded]]:
    recorded = Recorded()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            recorded.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": json.loads(self.rfile.read(length)) if length else None,
                }
            )
            reply = recorded.replies.pop(0) if recorded.replies else recorded.reply
            data = json.dumps(reply).encode()
            self.send_response(recorded.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", recorded
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def rest_for(base: str) -> kuberest.Rest:
    configuration = client.Configuration(host=base)
    configuration.api_key = {"authorization": "the-bearer"}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    api = client.ApiClient(configuration)
    api.user_agent = "tokensync/test"
    return kuberest.Rest(api)


def test_a_patch_carries_its_content_type_body_query_and_the_client_s_authentication(
    server: tuple[str, Recorded],
) -> None:
    base, recorded = server
    answer = rest_for(base).json(
        "PATCH",
        "/api/v1/namespaces/ns/secrets/a",
        query=[("labelSelector", "a=b,c"), ("watch", True), ("limit", 5)],
        body={"data": {"k": "dg=="}},
        content_type="application/strategic-merge-patch+json",
        timeout=5,
    )
    assert answer == {"kind": "Secret"}
    (request,) = recorded.requests
    assert request["method"] == "PATCH"
    assert (
        request["path"]
        == "/api/v1/namespaces/ns/secrets/a?labelSelector=a%3Db%2Cc&watch=true&limit=5"
    )
    assert request["headers"]["content-type"] == "application/strategic-merge-patch+json"
    assert request["headers"]["accept"] == "application/json"
    assert request["headers"]["authorization"] == "Bearer the-bearer"
    assert request["headers"]["user-agent"] == "tokensync/test"
    assert request["body"] == {"data": {"k": "dg=="}}


def test_a_get_sends_no_body_and_may_ask_for_metadata_only(server: tuple[str, Recorded]) -> None:
    base, recorded = server
    rest_for(base).json("GET", "/api/v1/secrets", accept="application/json;as=X", timeout=5)
    (request,) = recorded.requests
    assert request["body"] is None
    assert "content-type" not in request["headers"]
    assert request["headers"]["accept"] == "application/json;as=X"


def test_an_error_status_raises_the_client_s_exception_with_its_body(
    server: tuple[str, Recorded],
) -> None:
    base, recorded = server
    recorded.status = 409
    recorded.reply = {"kind": "Status", "reason": "Conflict", "message": "echoes what was sent"}
    with pytest.raises(client.ApiException) as caught:
        rest_for(base).json("PUT", "/apis/coordination.k8s.io/v1/x", body={}, timeout=5)
    assert caught.value.status == 409
    assert kube.status_reason(caught.value.body) == "Conflict"


async def test_kube_reduces_an_error_to_its_status_and_reason(
    server: tuple[str, Recorded],
) -> None:
    base, recorded = server
    recorded.status = 404
    recorded.reply = {"kind": "Status", "reason": "NotFound"}
    api = kube.Kube(client.ApiClient(client.Configuration(host=base)), workers=1)
    try:
        assert await api.read_secret("ns", "gone") is None
        recorded.status = 422
        recorded.reply = {"kind": "Status", "reason": "Invalid", "message": "data: secret"}
        with pytest.raises(failures.ApiError) as caught:
            await api.patch_secret("ns", "a", {"data": {"k": "c2VjcmV0"}})
    finally:
        api.close()
    assert caught.value.status == 422
    assert "Invalid" in str(caught.value)
    # The body's message may echo what was sent: only the reason is kept.
    assert "data: secret" not in str(caught.value)


async def test_a_listing_follows_its_pages_in_metadata_only(
    server: tuple[str, Recorded],
) -> None:
    base, recorded = server

    def secret(name: str, version: str) -> dict[str, Any]:
        meta = {"namespace": "ns", "name": name, "resourceVersion": version}
        return {"metadata": meta | {"managedFields": [{"manager": "x" * 100}]}}

    recorded.replies = [
        {"items": [secret("a", "1"), secret("b", "2")], "metadata": {"continue": "next"}},
        {"items": [secret("c", "3")], "metadata": {}},
    ]
    api = kube.Kube(client.ApiClient(client.Configuration(host=base)), workers=1)
    try:
        versions = await api.list_secret_versions("ns", "app=x")
    finally:
        api.close()
    assert versions == {("ns", "a"): "1", ("ns", "b"): "2", ("ns", "c"): "3"}
    first, second = recorded.requests
    assert first["path"] == "/api/v1/namespaces/ns/secrets?limit=100&labelSelector=app%3Dx"
    assert second["path"].endswith("&continue=next")
    assert first["headers"]["accept"].startswith("application/json;as=PartialObjectMetadataList")


def test_the_generated_api_classes_are_never_imported() -> None:
    """Their modules cost 26 MiB (decision 0055): building the operator's clients must
    not load them."""
    code = (
        "import sys\n"
        "from kubernetes import client\n"
        "from tokensync import kube, listwatch, membership\n"
        "api = client.ApiClient()\n"
        "kube.Kube(api, workers=1).close()\n"
        "membership.LeaseApi(api, namespace='ns', timeout=1).close()\n"
        "listwatch.ListWatch(api, path='/api/v1/secrets', namespace=None, what='x',"
        " summarize=lambda k, o: None, deliver=print)\n"
        "print(sorted(m for m in sys.modules if m.startswith('kubernetes.client.api.')))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert loaded == "[]"
