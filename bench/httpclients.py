"""CPU per token request of two asyncio HTTP clients, httpx and aiohttp. Prints figures.

The operator's token requests go through httpx; in cold-start profiles they
are a fifth of the operator's GIL time (docs/performance.md, issue 19). This measures what
the client library itself costs per request, apart from the operator: the benchmarks'
token endpoint runs in a child process (its CPU is not counted), and each client sends
``-n`` form-encoded client-credentials requests over loopback, at most four at once (the
operator's default ``--token-concurrency``), after a warm-up, reading each JSON answer.
The rounds alternate the clients.

    python bench/httpclients.py -n 3000 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx

HERE = pathlib.Path(__file__).resolve().parent
FORM = {"grant_type": "client_credentials", "client_id": "bench", "client_secret": "bench"}
IN_FLIGHT = 4
WARM_UP = 200

SERVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tokenendpoint import FastTokenEndpoint
with FastTokenEndpoint() as endpoint:
    print(endpoint.url, flush=True)
    sys.stdin.read()
"""


async def _timed(one: Callable[[], Awaitable[None]], n: int) -> float:
    """CPU seconds of this process per request, over ``n`` requests after a warm-up."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def gated() -> None:
        async with gate:
            await one()

    await asyncio.gather(*(gated() for _ in range(WARM_UP)))
    start = time.process_time()
    await asyncio.gather(*(gated() for _ in range(n)))
    return (time.process_time() - start) / n


async def with_httpx(url: str, n: int) -> float:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=IN_FLIGHT)) as client:

        async def one() -> None:
            response = await client.post(url, data=FORM)
            response.raise_for_status()
            response.json()

        return await _timed(one, n)


async def with_aiohttp(url: str, n: int) -> float:
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with session.post(url, data=FORM) as response:
                response.raise_for_status()
                await response.json()

        return await _timed(one, n)


CLIENTS = {"httpx": with_httpx, "aiohttp": with_aiohttp}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="requests per client and round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(HERE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        per: dict[str, list[float]] = {name: [] for name in CLIENTS}
        for round_ in range(args.rounds):
            for name, client in CLIENTS.items():
                seconds = asyncio.run(client(url, args.n))
                per[name].append(seconds)
                print(f"round {round_ + 1}: {name}: {seconds * 1000:.3f} ms of CPU per request")
        for name, values in per.items():
            ms = [round(v * 1000, 3) for v in values]
            print(f"{name}: median {statistics.median(ms)} [{min(ms)}-{max(ms)}] ms per request")
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
