"""Two operator processes never roll a token back (issue 14 section 9, decision 0036).

Scaling the Deployment to two, or a rolling update, runs two operators at once. Until
leader election, every write must be safe against a second writer: a Secret's issue time
never goes backwards, and status and Secret never disagree at rest. Two operator processes
run here on one control plane with the same ServiceAccount, on tokens that live 10 s
(renewed every 6-7 s), while a sampler reads every Secret and ClientCredential about ten
times a second.

The token endpoint is a relay in front of the token server that holds each answer back for
a random time (up to :data:`LAG` seconds) after the token was issued, so that the process
that fetched first does not always write first: the race the section is about. Counted,
not timed: issue-time regressions (exact, from the token server's own record of
when it issued each token the Secret held) and disagreements at rest (both objects
unchanged for :data:`QUIET` seconds, status describing another token than the Secret). The
figures are printed; docs/reliability.md has them.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import pathlib
import random
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from kubernetes import client
from test_operator import Env

from localcluster import LocalCluster
from support import testenv
from support.operatorproc import OperatorProcess, install_operator_identity
from support.polling import wait_for
from support.tokenserver import TokenServer

CREDENTIALS = 3
LIFETIME = 10
#: How long the two operators run side by side.
RUN_SECONDS = 60
#: Unchanged this long, a Secret and its ClientCredential are at rest.
QUIET = 2.0
#: Every so often each credential is force-refreshed: both operators see the request at
#: once, both fetch, both write, and one of the writes meets the other's.
FORCE_EVERY = 9.0
#: Longest a token's answer is held back after the token server issued it.
LAG = 0.8
ISSUED_AT, EXPIRES_AT, REFRESH_AT = (
    "tokensync.dev/issued-at",
    "tokensync.dev/expires-at",
    "tokensync.dev/refresh-at",
)


class LaggyRelay:
    """Forwards token requests to ``upstream`` at once, and its answer back after a random
    delay: tokens issued in one order reach the operators in another."""

    def __init__(self, upstream: str) -> None:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() in ("authorization", "content-type", "accept")
                }
                request = urllib.request.Request(upstream, data=body, headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=10) as answer:
                        status, data = answer.status, answer.read()
                except urllib.error.HTTPError as exc:
                    status, data = exc.code, exc.read()
                time.sleep(random.uniform(0, LAG))  # noqa: S311 -- not a secret
                relay.relayed += 1
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the operator stopped meanwhile
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.relayed = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def __enter__(self) -> LaggyRelay:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclasses.dataclass
class Track:
    """What the sampler saw of one credential."""

    tokens: list[str] = dataclasses.field(default_factory=list)
    issued_at: list[str] = dataclasses.field(default_factory=list)
    #: (Secret resourceVersion, ClientCredential resourceVersion) and since when unchanged.
    versions: tuple[str, str] = ("", "")
    since: float = 0.0
    rests: int = 0
    disagreements: list[str] = dataclasses.field(default_factory=list)
    checked: tuple[str, str] = ("", "")


class Sampler(threading.Thread):
    def __init__(self, env: Env, names: list[str]) -> None:
        super().__init__(daemon=True)
        self.env = env
        self.tracks = {name: Track() for name in names}
        self.stopping = threading.Event()
        self.samples = 0
        self.errors: list[str] = []
        self.force = True
        self.forced = 0

    def run(self) -> None:
        forced = time.monotonic()
        while not self.stopping.is_set():
            if self.force and time.monotonic() - forced > FORCE_EVERY:
                forced = time.monotonic()
                for name in self.tracks:
                    self.env.force_refresh(name)
                self.forced += 1
            for name, track in self.tracks.items():
                try:
                    self.sample(name, track)
                except client.ApiException as exc:  # the API server is busy: next round
                    self.errors.append(f"{exc.status}")
            self.samples += 1
            time.sleep(0.1)

    def sample(self, name: str, track: Track) -> None:
        secret = self.env.core.read_namespaced_secret(f"{name}-token", self.env.ns)
        credential = self.env.get(name)
        data = secret.data or {}
        annotations = secret.metadata.annotations or {}
        access_token = testenv.decoded(data).get("access_token", "")
        if not track.tokens or track.tokens[-1] != access_token:
            track.tokens.append(access_token)
            track.issued_at.append(annotations.get(ISSUED_AT, ""))
        versions = (secret.metadata.resource_version, credential["metadata"]["resourceVersion"])
        now = time.monotonic()
        if versions != track.versions:
            track.versions, track.since = versions, now
            return
        if now - track.since < QUIET or track.checked == versions:
            return
        # At rest: status must describe the token the Secret holds.
        track.checked = versions
        track.rests += 1
        status = credential.get("status") or {}
        wanted = {
            "lastRefreshAt": annotations.get(ISSUED_AT),
            "expiresAt": annotations.get(EXPIRES_AT),
            "nextRefreshAt": annotations.get(REFRESH_AT),
            "target": f"{name}-token",
        }
        differ = {k: (status.get(k), v) for k, v in wanted.items() if status.get(k) != v}
        if "expires_at" not in data or differ:
            track.disagreements.append(f"{name} at {versions}: {differ}")


def regressions(server: TokenServer, track: Track) -> int:
    """Tokens the Secret held that the server issued before the one held before them."""
    issued = {i.access_token: i.issued_at for i in server.issued}
    times = [issued[t] for t in track.tokens if t in issued]
    annotated = [t for t in track.issued_at if t]
    backwards = sum(1 for a, b in itertools.pairwise(times) if b < a)
    return backwards + sum(1 for a, b in itertools.pairwise(annotated) if b < a)


def test_two_operators_never_roll_a_token_back(
    cluster: LocalCluster,
    api_client: client.ApiClient,
    crds: None,
    namespace: str,
    tmp_path: pathlib.Path,
) -> None:
    kubeconfig = install_operator_identity(cluster, api_client, tmp_path / "sa.kubeconfig")
    names = [f"c{i}" for i in range(CREDENTIALS)]
    with TokenServer(lifetime=LIFETIME) as server, LaggyRelay(server.url) as relay:
        env = Env(api_client, namespace, server)
        env.client_secret()
        for name in names:
            env.credential(name, tokenURL=relay.url, refresh={"minInterval": "1s"})
        operators = [
            OperatorProcess(
                kubeconfig=kubeconfig,
                log_path=tmp_path / f"operator-{which}.log",
                extra_args=["--namespace", namespace],
            )
            for which in ("a", "b")
        ]
        sampler = Sampler(env, names)
        try:
            for operator in operators:
                operator.start()
            for name in names:
                wait_for(lambda name=name: env.token(f"{name}-token"), what=f"token {name}")
            sampler.start()
            time.sleep(RUN_SECONDS)
            # One operator goes (a rolling update's end); the other one carries on.
            sampler.force = False
            operators[1].stop()
            time.sleep(3 * LIFETIME)
        finally:
            sampler.stopping.set()
            sampler.join(10)
            for operator in operators:
                operator.stop()
        logs = [operator.log() for operator in operators]

    tracks = sampler.tracks
    backwards = {name: regressions(server, track) for name, track in tracks.items()}
    refreshes = {name: len(track.tokens) - 1 for name, track in tracks.items()}
    issued = {i.access_token for i in server.issued}
    foreign = [t for track in tracks.values() for t in track.tokens if t not in issued]
    figures = {
        "samples": sampler.samples,
        "refreshes seen in the Secrets": refreshes,
        "token requests": len(server.issued),
        "issued per operator": [log.count("issued a token for") for log in logs],
        "force refreshes per credential": sampler.forced,
        "adopted per operator": [log.count("adopted the token of") for log in logs],
        "lost a race to the other's write": [log.count("another writer stored") for log in logs],
        "status left for a newer one": [log.count("describes a newer token") for log in logs],
        "issue-time regressions": backwards,
        "checks at rest": {name: track.rests for name, track in tracks.items()},
        "disagreements at rest": sum(len(track.disagreements) for track in tracks.values()),
    }
    print(f"\ntwo writers, {datetime.datetime.now(datetime.UTC):%Y-%m-%d}: {figures}")
    assert not foreign, "the Secret held a token the server did not issue"
    assert sum(backwards.values()) == 0, backwards
    disagreements = [d for track in tracks.values() for d in track.disagreements]
    assert not disagreements, disagreements
    # The run exercised what it claims to: both wrote, and every credential came to rest.
    assert all(count > 0 for count in refreshes.values()), refreshes
    assert all(track.rests > 0 for track in tracks.values())
    assert all("issued a token for" in log for log in logs)
    for log in logs:
        assert "Traceback" not in log
        for token in (t for track in tracks.values() for t in track.tokens):
            assert token not in log
