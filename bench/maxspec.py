"""Operator memory with the largest ClientCredentials admission allows (issue 14 section 3).

A tenant allowed to create ClientCredentials and Secrets in one namespace creates N of
them, each as large as the applied CRD admits: every string at its maxLength, every list
and map at its maxItems / maxProperties (within the CEL rules on totals), names of 253
characters, client authentication that works (client_secret_basic), so that every
credential is handled. Phases, on the real local control plane:

1. the operator starts with no credential (``--namespace``: it sees only this one);
   its RSS after 5 s is the baseline;
2. the tenant creates the N client Secrets and N credentials while it runs; once every
   credential has a Ready condition and 15 s passed: RSS, and the peak (VmHWM);
3. the operator restarts and lists them all (what crash-loops when a listing does not fit):
   RSS once every credential is scheduled again and 15 s passed, and the peak.

RSS per credential is (RSS after phase 2 - baseline) / N. Compare the operator's memory
limit: 512Mi in deploy/base/deployment.yaml and the Helm chart's values.

    python bench/maxspec.py -n 1000                        # this tree's operator and CRD
    python bench/maxspec.py -n 100 --revision HEAD --crd-revision HEAD
    python bench/maxspec.py -n 1000 --shape minimal       # the same count, minimal specs

``--revision`` runs that revision's operator (``git archive``, as bench/abtest.py does),
``--source DIR`` the operator under DIR (a modified copy, for an experiment);
``--crd-revision`` applies that revision's CRD (and so its bounds). Figures are printed
and written to bench/out/<timestamp>-maxspec-n<N>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import yaml
from kubernetes import config

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import abtest
import scale
from tokenendpoint import FastTokenEndpoint

from localcluster import LocalCluster
from support.operatorproc import OperatorProcess, apply_documents, install_operator_identity

NAMESPACE = "tenant"
CRD = "crds/clientcredentials.tokensync.dev.yaml"
#: The memory limit shipped in deploy/base/deployment.yaml and the Helm values.
SHIPPED_LIMIT_MIB = 512


def crd_at(revision: str | None) -> dict[str, Any]:
    """The CRD of this tree, or of ``revision``."""
    if revision is None:
        text = (scale.REPO / CRD).read_text()
    else:
        text = subprocess.run(
            ["git", "show", f"{revision}:{CRD}"],
            cwd=scale.REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    (doc,) = [d for d in yaml.safe_load_all(text) if d]
    return dict(doc)


def spec_schema(crd: Mapping[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def total_bound(node: Mapping[str, Any]) -> int | None:
    """The bound of a CEL rule on the total size of a map (``... .sum() <= N``), if any."""
    for rule in node.get("x-kubernetes-validations", []):
        if ".sum()" in rule["rule"] and (found := re.search(r"<= (\d+)", rule["rule"])):
            return int(found.group(1))
    return None


def padded(prefix: str, length: int, fill: str = "x") -> str:
    return (prefix + fill * length)[:length]


def long_name(index: int, suffix: str = "") -> str:
    """A distinct DNS subdomain of 253 characters (including ``suffix``)."""
    return padded(f"t{index:05d}-", 253 - len(suffix), "a") + suffix


def label_keys(count: int) -> Iterator[str]:
    """Distinct label/annotation keys of the longest form: a 253-character prefix, a
    63-character name."""
    for i in range(count):
        yield f"{padded(f'p{i:03d}', 253, 'a')}/{padded(f'n{i:03d}', 63, 'b')}"


def fill_map(
    keys: Iterator[str], *, count: int, value_length: int, budget: int | None
) -> dict[str, str]:
    """``count`` entries of the longest values, within ``budget`` characters in all."""
    out: dict[str, str] = {}
    for key in keys:
        if len(out) >= count:
            break
        room = value_length if budget is None else min(value_length, budget - len(key))
        if room < 0:
            break
        out[key] = padded("v", room)
        if budget is not None:
            budget -= len(key) + room
    return out


def max_spec(
    schema: Mapping[str, Any], *, index: int, token_url: str, secret: str
) -> dict[str, Any]:
    """The largest spec the schema admits that still gets a token (client_secret_basic)."""
    props = schema["properties"]
    ref = props["clientSecretRef"]["properties"]
    url_length = props["tokenURL"]["maxLength"]
    scopes, resources = props["scopes"], props["resources"]
    extra = props["extraParams"]
    target = props["target"]
    labels, annotations = target["properties"]["labels"], target["properties"]["annotations"]
    target_budget = total_bound(target)
    label_values = fill_map(
        label_keys(labels["maxProperties"]),
        count=labels["maxProperties"],
        value_length=labels["additionalProperties"]["maxLength"],
        budget=target_budget,
    )
    used = sum(len(k) + len(v) for k, v in label_values.items())
    annotation_values = fill_map(
        label_keys(annotations["maxProperties"]),
        count=annotations["maxProperties"],
        value_length=annotations["additionalProperties"]["maxLength"],
        budget=None if target_budget is None else target_budget - used,
    )
    duration = props["refresh"]["properties"]["renewBefore"]["maxLength"]
    return {
        "tokenURL": padded(f"{token_url}?i={index}&pad=", url_length),
        "clientSecretRef": {
            "name": secret,
            "clientIDKey": padded("id", ref["clientIDKey"]["maxLength"]),
            "clientSecretKey": padded("secret", ref["clientSecretKey"]["maxLength"]),
        },
        "serviceAccountRef": {  # no token is minted with client_secret_basic
            "name": long_name(index, "-sa"),
            "audience": padded(
                "api://", props["serviceAccountRef"]["properties"]["audience"]["maxLength"]
            ),
        },
        "clientAssertion": {
            "audience": padded(
                "https://aud.example/",
                props["clientAssertion"]["properties"]["audience"]["maxLength"],
            ),
            "keyID": padded("kid", props["clientAssertion"]["properties"]["keyID"]["maxLength"]),
            "lifetime": padded("", duration - 4, "0") + "120s",
        },
        "clientID": padded(f"client-{index}-", props["clientID"]["maxLength"]),
        "authMethod": "client_secret_basic",
        "scopes": [
            padded(f"s{i:03d}.", scopes["items"]["maxLength"]) for i in range(scopes["maxItems"])
        ],
        "audience": padded("https://api.example/", props["audience"]["maxLength"]),
        "resources": [
            padded(f"https://api.example/{i:03d}/", resources["items"]["maxLength"])
            for i in range(resources["maxItems"])
        ],
        "extraParams": fill_map(
            (padded(f"param{i:03d}_", 128) for i in range(extra["maxProperties"])),
            count=extra["maxProperties"],
            value_length=extra["additionalProperties"]["maxLength"],
            budget=total_bound(extra),
        ),
        "refresh": {
            "renewBefore": padded("", duration - 2, "0") + "5m",
            "minInterval": padded("", duration - 3, "0") + "30s",
            "defaultLifetime": padded("", duration - 2, "0") + "1h",
        },
        "target": {
            "name": long_name(index, "-tok"),
            "labels": label_values,
            "annotations": annotation_values,
        },
    }


def minimal_spec(*, token_url: str, secret: str) -> dict[str, Any]:
    return {"tokenURL": token_url, "clientSecretRef": {"name": secret}}


async def create_all(
    cluster: LocalCluster, token_url: str, schema: Mapping[str, Any], args: argparse.Namespace
) -> int:
    """The tenant's N client Secrets and credentials; returns the bytes of one credential."""
    sem = asyncio.Semaphore(16)
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    sizes: list[int] = []
    async with httpx.AsyncClient(
        base_url=cluster.server, verify=scale.admin_ssl(cluster), limits=limits, timeout=120
    ) as http:

        async def one(index: int) -> None:
            big = args.shape == "max"
            name = long_name(index) if big else f"cc-{index:05d}"
            secret = long_name(index, "-client") if big else f"{name}-client"
            if big:
                spec = max_spec(schema, index=index, token_url=token_url, secret=secret)
                keys = spec["clientSecretRef"]
                data = {keys["clientIDKey"]: f"id-{index}", keys["clientSecretKey"]: "s3cret"}
            else:
                spec = minimal_spec(token_url=token_url, secret=secret)
                data = {"client_id": f"id-{index}", "client_secret": "s3cret"}
            body = {
                "apiVersion": "tokensync.dev/v1alpha1",
                "kind": "ClientCredential",
                "metadata": {"name": name},
                "spec": spec,
            }
            async with sem:
                r = await http.post(
                    scale.SECRET_PATH,
                    json={
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {
                            "name": secret,
                            "labels": {"tokensync.dev/client-secret": "true"},
                            "annotations": {"tokensync.dev/allowed-destinations": spec["tokenURL"]},
                        },
                        "stringData": data,
                    },
                )
                r.raise_for_status()
                r = await http.post(scale.CC_PATH, json=body)
                r.raise_for_status()
                sizes.append(len(r.content))

        await asyncio.gather(*(one(i) for i in range(args.n)))
    return max(sizes)


class DecidedWatcher(scale.Watcher):
    """Credentials with a Ready condition (True or False): the operator has handled them."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(cluster, scale.CC_PATH, {})
        self.reasons: dict[str, str] = {}

    def handle(self, type_: str, obj: dict[str, Any], now: float) -> None:
        for condition in (obj.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "Ready":
                self.reasons[obj["metadata"]["name"]] = str(condition.get("reason"))


def rss(pid: int) -> tuple[float, float]:
    _, now, peak = scale.Sampler.read(pid)
    return round(now, 1), round(peak, 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    abtest.use_namespace(NAMESPACE)
    work = pathlib.Path(tempfile.mkdtemp(prefix="tokensync-maxspec-"))
    source = abtest.export(args.revision, work) if args.revision else args.source
    if source is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(source), abtest.BASE_PYTHONPATH])
    crd = crd_at(args.crd_revision)
    schema = spec_schema(crd)
    result: dict[str, Any] = {
        "n": args.n,
        "shape": args.shape,
        "operator": args.revision or str(args.source or "working tree"),
        "crd": args.crd_revision or "working tree",
        "operator_args": args.operator_arg,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "mem_total_mib": scale.mem_total_mib()},
        "shipped_limit_mib": SHIPPED_LIMIT_MIB,
    }
    with LocalCluster() as cluster, FastTokenEndpoint(lifetime=3600) as server:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        apply_documents(api, [crd])
        kubeconfig = install_operator_identity(cluster, api, work / "sa.kubeconfig")
        httpx.post(
            f"{cluster.server}/api/v1/namespaces",
            json={"metadata": {"name": NAMESPACE}},
            verify=scale.admin_ssl(cluster),
        ).raise_for_status()
        op_args = [
            f"--token-rate={args.token_rate}",
            f"--namespace={NAMESPACE}",
            *args.operator_arg,
        ]

        def start(log: str) -> tuple[OperatorProcess, int]:
            op = OperatorProcess(
                kubeconfig=kubeconfig, log_path=work / log, extra_args=op_args, verbose=False
            ).start(timeout=300)
            return op, scale.operator_pid(op)

        op, pid = start("operator-1.log")
        time.sleep(5)
        result["baseline_rss_mib"] = rss(pid)[0]

        decided = DecidedWatcher(cluster)
        decided.start()
        t0 = time.time()
        result["credential_bytes"] = asyncio.run(create_all(cluster, server.url, schema, args))
        result["create_seconds"] = round(time.time() - t0, 1)
        print(f"created {args.n} credentials in {result['create_seconds']} s", flush=True)
        done = scale.wait_for(lambda: len(decided.reasons) >= args.n, args.timeout, step=0.5)
        result["all_handled_seconds"] = None if done is None else round(done - t0, 1)
        time.sleep(15)
        now, peak = rss(pid)
        result["created"] = {"rss_mib": now, "peak_rss_mib": peak}
        reasons: dict[str, int] = {}
        for reason in decided.reasons.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        result["ready_reasons"] = reasons
        result["rss_per_credential_kib"] = round(
            (now - result["baseline_rss_mib"]) * 1024 / args.n, 1
        )
        print(json.dumps(result), flush=True)
        op.stop()

        t1 = time.time()
        op, pid = start("operator-2.log")
        listed = scale.wait_for(lambda: scale.queue_size(op) >= args.n, args.timeout, step=0.5)
        time.sleep(15)
        now, peak = rss(pid)
        result["restart"] = {
            "scheduled_seconds": None if listed is None else round(listed - t1, 1),
            "rss_mib": now,
            "peak_rss_mib": peak,
        }
        op.stop()
        decided.stop()
        result["operator_errors"] = sum(
            (work / log).read_text(errors="replace").count("ERROR")
            for log in ("operator-1.log", "operator-2.log")
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="credentials in the one namespace")
    parser.add_argument("--shape", choices=("max", "minimal"), default="max")
    parser.add_argument("--revision", help="run this git revision's operator (default: tree)")
    parser.add_argument(
        "--source", type=pathlib.Path, help="run the operator package under this directory"
    )
    parser.add_argument("--crd-revision", help="apply this git revision's CRD (default: tree)")
    parser.add_argument("--token-rate", type=float, default=100.0)
    parser.add_argument(
        "--operator-arg", action="append", default=[], help="one more operator flag (repeatable)"
    )
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2))
    scale.OUT.mkdir(parents=True, exist_ok=True)
    path = scale.OUT / f"{time.strftime('%Y%m%dT%H%M%S')}-maxspec-n{args.n}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
