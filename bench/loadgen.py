"""Closed-loop HTTP load generator: N concurrent asyncio workers, one aiohttp session, keep-alive.

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:8080/predictions/sentiment \
        --bodies bodies.json --concurrency 8 --warmup 1 --duration 4

Each worker sends its next request as soon as the previous one is answered. Requests cycle through
the bodies in --bodies (a JSON list of strings, sent as application/json); without --bodies it sends
GETs. Only requests that complete inside the measuring window (after the warm-up) are counted.
Prints "MEASURING" when the window opens, then one JSON line with the result: throughput, latency
percentiles, non-200 and failed requests, and this process's own CPU time in the window.
"""

import argparse
import asyncio
import json
import os
import sys
import time

import aiohttp


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    rank = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


async def run(url: str, bodies: list[bytes] | None, concurrency: int, warmup: float, duration: float,
              max_requests: int, timeout: float) -> dict:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False, ttl_dns_cache=None)
    session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout))
    headers = {"Content-Type": "application/json"}
    loop = asyncio.get_running_loop()
    started = loop.time()
    window_start, window_end = started + warmup, started + warmup + duration
    latencies: list[float] = []
    state = {"issued": 0, "cursor": 0, "non_200": 0, "failed": 0, "statuses": {}, "sample": None, "first_error": None}
    cpu = {}

    def open_window() -> None:
        cpu["start"] = time.process_time()
        print("MEASURING", flush=True)

    def close_window() -> None:
        cpu["end"] = time.process_time()

    loop.call_at(window_start, open_window)
    loop.call_at(window_end, close_window)

    async def worker() -> None:
        while loop.time() < window_end and state["issued"] < max_requests:
            state["issued"] += 1
            t0 = loop.time()
            status, body = None, b""
            try:
                if bodies is None:
                    async with session.get(url) as response:
                        status, body = response.status, await response.read()
                else:
                    data = bodies[state["cursor"] % len(bodies)]
                    state["cursor"] += 1
                    async with session.post(url, data=data, headers=headers) as response:
                        status, body = response.status, await response.read()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
                state["first_error"] = state["first_error"] or repr(error)
            t1 = loop.time()
            if not window_start <= t1 < window_end:
                continue
            if status is None:
                state["failed"] += 1
                continue
            state["statuses"][status] = state["statuses"].get(status, 0) + 1
            if status != 200:
                state["non_200"] += 1
                state["first_error"] = state["first_error"] or f"HTTP {status}: {body[:200]!r}"
                continue
            if state["sample"] is None:
                state["sample"] = body.decode("utf-8", "replace")[:300]
            latencies.append(t1 - t0)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await session.close()
    cpu.setdefault("start", time.process_time())
    cpu.setdefault("end", time.process_time())
    measured = min(duration, max(loop.time() - window_start, 1e-9))
    latencies.sort()
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    return {
        "concurrency": concurrency,
        "duration_s": round(measured, 3),
        "requests": len(latencies),
        "throughput_rps": round(len(latencies) / measured, 1),
        "latency_ms": {
            "mean": ms(sum(latencies) / len(latencies)) if latencies else None,
            "p50": ms(percentile(latencies, 50)),
            "p90": ms(percentile(latencies, 90)),
            "p99": ms(percentile(latencies, 99)),
            "max": ms(latencies[-1] if latencies else None),
        },
        "errors": state["non_200"] + state["failed"],
        "non_200": state["non_200"],
        "failed": state["failed"],
        "statuses": {str(k): v for k, v in state["statuses"].items()},
        "issued_total": state["issued"],
        "hit_max_requests": state["issued"] >= max_requests,
        "client_cpu_s": round(cpu["end"] - cpu["start"], 3),
        "client_cpu_cores": round((cpu["end"] - cpu["start"]) / measured, 3),
        "first_error": state["first_error"],
        "sample_response": state["sample"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", help="JSON file: a list of request bodies (strings); omitted: GET")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--max-requests", type=int, default=100_000, help="bound on requests issued, warm-up included")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument("--offset", type=int, default=0, help="start position in the body list")
    args = parser.parse_args()
    bodies = None
    if args.bodies:
        with open(args.bodies) as f:
            texts = json.load(f)
        shift = args.offset % len(texts)
        bodies = [t.encode("utf-8") for t in texts[shift:] + texts[:shift]]
    result = asyncio.run(run(args.url, bodies, args.concurrency, args.warmup, args.duration, args.max_requests, args.timeout))
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
