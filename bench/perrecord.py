"""What the operator keeps per credential, measured in one process without a cluster.

A restart's worth of watch events, in the order a start lists them (the client Secrets,
then the ClientCredentials with a Ready status, then their target Secrets), fed to a
``reconcile.Reconciler`` whose attempts never run. Each listing is parsed one page of 100
at a time, as kopf parses them, so map keys are shared within a page and nowhere else.
tracemalloc then compares the heap before and after: bytes and blocks per credential, by
the innermost tokensync line that allocated them; and, per field of the records, the
bytes their values take (strings shared by more than 50 references not counted).

Seconds to run, so a change to what a record keeps can be weighed before a cluster run
(bench/tracemem.py, make bench-scale). It measures our state only: kopf's, asyncio's and
the allocators' costs are not in it.

    PYTHONPATH=operator .venv/bin/python bench/perrecord.py [-n 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import datetime
import gc
import json
import sys
import tracemalloc
import uuid
from collections import Counter
from typing import Any

from tokensync import metrics, model, reconcile, scheduler, target, tracking

T0 = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
S = datetime.timedelta(seconds=1)
PAGE = 100


def credential(i: int) -> dict[str, Any]:
    name, issued = f"cc-{i:05d}", T0 - 100 * S
    return {
        "apiVersion": f"{model.GROUP}/{model.VERSION}",
        "kind": model.KIND,
        "metadata": {
            "namespace": "bench",
            "name": name,
            "uid": str(uuid.uuid4()),
            "generation": 1,
            "resourceVersion": str(200_000 + i),
        },
        "spec": {
            "tokenURL": "http://127.0.0.1:8080/token",
            "clientSecretRef": {"name": f"{name}-client"},
        },
        "status": {
            "observedGeneration": 1,
            "lastRefreshAt": model.format_time(issued),
            "expiresAt": model.format_time(issued + 3600 * S),
            "nextRefreshAt": model.format_time(issued + 2300 * S),
            "clientSecretVersion": str(100_000 + i),
            "authMethod": "client_secret_basic",
            "target": f"{name}-token",
            "tokenType": "Bearer",
            "failedAttempts": 0,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "TokenIssued",
                    "message": f"token valid until {model.format_time(issued + 3600 * S)}",
                    "observedGeneration": 1,
                    "lastTransitionTime": model.format_time(issued),
                }
            ],
        },
    }


def client_secret(i: int) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "bench",
            "name": f"cc-{i:05d}-client",
            "uid": str(uuid.uuid4()),
            "resourceVersion": str(100_000 + i),
            "labels": {model.CLIENT_SECRET_LABEL: "true"},
        },
        "data": {
            "client_id": base64.b64encode(f"client-{i}".encode()).decode(),
            "client_secret": base64.b64encode(f"secret-{i:05d}-0123456789".encode()).decode(),
        },
    }


def target_secret(body: dict[str, Any]) -> dict[str, Any]:
    meta, issued = body["metadata"], T0 - 100 * S
    rendered = target.render_target(
        namespace=meta["namespace"],
        credential=meta["name"],
        credential_uid=meta["uid"],
        target=model.TargetSpec(name=body["status"]["target"]),
        access_token="t" * 64,
        token_type="Bearer",
        expires_at=issued + 3600 * S,
        scope=None,
        issued_at=issued,
        refresh_at=issued + 2300 * S,
    )
    created = target.for_create(rendered)
    created["metadata"].update(uid=str(uuid.uuid4()), resourceVersion=str(300_000))
    return created


def listed(items: list[dict[str, Any]]) -> list[Any]:
    """As a paged listing parses them: one JSON document per page."""
    out: list[Any] = []
    for start in range(0, len(items), PAGE):
        out += json.loads(json.dumps(items[start : start + PAGE]))
    return out


def reconciler() -> reconcile.Reconciler:
    return reconcile.Reconciler(
        kube_api=None,  # type: ignore[arg-type] -- no attempt runs
        http=None,  # type: ignore[arg-type]
        metrics_=metrics.Metrics(),
        queue=scheduler.RefreshQueue(workers=1),
        pacer=scheduler.HostPacer(rate=1, burst=1),
    )


def restart(rec: reconcile.Reconciler, first: int, count: int) -> None:
    numbers = range(first, first + count)
    for secret in listed([client_secret(i) for i in numbers]):
        rec.secret_seen(secret)
    bodies = listed([credential(i) for i in numbers])
    for body in bodies:
        rec.observe(body)
    for secret in listed([target_secret(body) for body in bodies]):
        found = target.seen("LISTED", secret)
        assert found is not None
        rec.target_seen(found)


def deep_size(value: Any, counted: set[int]) -> int:
    """Bytes of ``value`` and what it holds, each object once; widely shared strings not."""
    if value is None or isinstance(value, bool) or id(value) in counted:
        return 0
    if isinstance(value, str) and sys.getrefcount(value) > 50:
        return 0
    counted.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        size += sum(deep_size(k, counted) + deep_size(v, counted) for k, v in value.items())
    elif isinstance(value, list | tuple | set | frozenset):
        size += sum(deep_size(item, counted) for item in value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        size += sum(deep_size(getattr(value, f.name), counted) for f in dataclasses.fields(value))
    return size


def by_field(records: list[tracking.Record]) -> Counter[str]:
    sizes: Counter[str] = Counter()
    counted: set[int] = set()
    for record in records:
        for field in dataclasses.fields(record):
            value = getattr(record, field.name)
            if field.name == "state":
                sizes["State itself"] += sys.getsizeof(value)
                for inner in dataclasses.fields(value):
                    sizes[f"state.{inner.name}"] += deep_size(getattr(value, inner.name), counted)
            else:
                sizes[field.name] += deep_size(value, counted)
        sizes["Record itself"] += sys.getsizeof(record)
    return sizes


async def measure(count: int, top: int) -> None:
    rec = reconciler()
    restart(rec, count, 1)  # one first: caches and interned words exist before the snapshot
    gc.collect()
    tracemalloc.start(16)
    before = tracemalloc.take_snapshot()
    restart(rec, 0, count)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = after.compare_to(before, "traceback")
    total, blocks = sum(s.size_diff for s in stats), sum(s.count_diff for s in stats)
    print(f"{count} credentials: {total / count:.0f} bytes, {blocks / count:.1f} blocks each")
    lines: Counter[str] = Counter()
    for stat in stats:
        frame = next((f for f in reversed(stat.traceback) if "/tokensync/" in f.filename), None)
        where = f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else "(the rest)"
        if frame is None and "/json/" in stat.traceback[-1].filename:
            where = "(values parsed from the listings, kept)"
        lines[where] += stat.size_diff
    print("\nbytes per credential, by the innermost tokensync line that allocated them:")
    for where, size in lines.most_common(top):
        print(f"{size / count:8.1f}  {where}")
    records = [r for r in (rec._tracker.get(("bench", f"cc-{i:05d}")) for i in range(count)) if r]
    fields = by_field(records)
    print(f"\nthe records: {sum(fields.values()) / count:.0f} bytes per credential, by field:")
    for name, size in fields.most_common(top):
        if size:
            print(f"{size / count:8.1f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="credentials")
    parser.add_argument("--top", type=int, default=20, help="rows per table")
    args = parser.parse_args()
    asyncio.run(measure(args.n, args.top))


if __name__ == "__main__":
    main()
