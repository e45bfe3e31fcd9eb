"""The one HTTP load generator (asyncio + aiohttp, keep-alive), closed or open loop, for `make bench`,
`make overload` and `make soak`.

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:8080/predictions/sentiment \
        --bodies bodies.json --concurrency 8 --warmup 1 --duration 4

Closed loop: `concurrency` clients share one aiohttp session; each sends its next request as soon as
the previous one is answered, cycling through a list of requests (`closed_loop`). Every answer is
checked: a 200 whose body does not have the expected shape counts as an error ("200:bad_body"), so
a server that answers fast but wrongly cannot win a benchmark. Latency percentiles have one
definition, the nearest rank (`percentile`), in every report.

Open loop (`open_loop`): requests go out on a schedule fixed in advance (constant or Poisson
arrivals at a target rate), whether or not earlier ones were answered, so the offered load does not
drop as the server slows; each latency runs from the request's *scheduled* time, so a client that
falls behind cannot hide the server's queue (no coordinated omission). Every request ends answered,
refused (its status and kind) or timed out. bench/overload.py drives it past capacity.

As a command (bench/run.py runs it in a process of its own), it POSTs the bodies in --bodies (a
JSON list of strings) as application/json, or GETs without --bodies; a URL ending in /ping must be
answered {"status": "Healthy"}, any other a prediction {"label", "probability", ...}. Only
requests that complete inside the measuring window (after the warm-up) count. It prints "MEASURING"
when the window opens, then one JSON line: throughput, latency percentiles, errors, and this
process's own CPU time in the window. scripts/soak.py runs `closed_loop` in a thread with counters
of its own.
"""

import argparse
import asyncio
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

import aiohttp

JSON, PLAIN_TEXT = "application/json", "text/plain"
TIMEOUT = 30.0  # s per request: well above TorchServe's responseTimeout (10 s), so a hang shows as a timeout


@dataclass(frozen=True)
class Request:
    """One HTTP request: path on the server, raw body, Content-Type (None: no header). `form` is
    the answer shape expected on success ("text", "texts", "v2", "ping"); None: any answer body."""

    path: str
    body: bytes = b""
    content_type: str | None = JSON
    form: str | None = "text"
    method: str = "POST"


@dataclass
class Outcome:
    status: int | None  # None: no HTTP answer (connection error, client timeout)
    body: bytes
    error: str | None  # client-side failure, e.g. "ServerDisconnectedError"
    seconds: float

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def kind(self, form: str | None = None) -> str:
        """"ok", "<status>:<kind or type>" for an error answer, or the client-side exception name.
        A 200 whose body does not have the shape of `form` is "200:bad_body"."""
        if self.status is None:
            return self.error or "no_answer"
        body = self.json()
        if self.status == 200:
            return "ok" if form is None or answer_has_shape(body, form) else "200:bad_body"
        detail = (body.get("kind") or body.get("type")) if isinstance(body, dict) else None
        return f"{self.status}:{detail}" if detail else str(self.status)


def answer_has_shape(body, form: str) -> bool:
    if not isinstance(body, dict):
        return False
    if form == "text":
        return body.get("label") in ("negative", "positive") and isinstance(body.get("probability"), float)
    if form == "texts":
        return isinstance(body.get("predictions"), list) and all("label" in p for p in body["predictions"])
    if form == "ping":
        return body.get("status") == "Healthy"
    return isinstance(body.get("outputs"), list) and len(body["outputs"]) == 2


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least q % of the values at or below it."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values), max(1, math.ceil(q / 100 * len(sorted_values)))) - 1]


def latency_ms(seconds: list[float]) -> dict:
    """mean, p50, p90, p99 and max of latencies given in seconds, in milliseconds."""
    ordered = sorted(seconds)
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    return {"mean": ms(sum(ordered) / len(ordered)) if ordered else None,
            **{f"p{q}": ms(percentile(ordered, q)) for q in (50, 90, 99)},
            "max": ms(ordered[-1] if ordered else None)}


def client_session(concurrency: int, timeout: float = TIMEOUT) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=None),
                                 timeout=aiohttp.ClientTimeout(total=timeout))


async def send(session: aiohttp.ClientSession, base_url: str, request: Request) -> Outcome:
    """One request; never raises for a failed request (its Outcome says what happened)."""
    headers = {"Content-Type": request.content_type} if request.content_type else {}
    skip = () if request.content_type else ("Content-Type",)  # aiohttp would add application/octet-stream
    started = time.monotonic()
    try:
        async with session.request(request.method, base_url + request.path, data=request.body or None,
                                   headers=headers, skip_auto_headers=skip) as response:
            body = await response.read()
            return Outcome(response.status, body, None, time.monotonic() - started)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
        return Outcome(None, b"", type(error).__name__, time.monotonic() - started)


async def send_all(base_url: str, batch: list[Request], concurrency: int = 32) -> list[Outcome]:
    """Every request of `batch` at once (up to `concurrency` connections); outcomes in order."""
    async with client_session(concurrency) as session:
        return await asyncio.gather(*(send(session, base_url, request) for request in batch))


async def closed_loop(base_url: str, batch: list[Request], concurrency: int, keep_going: Callable[[], bool],
                      on_done: Callable[[Request, Outcome], None], on_send: Callable[[Request], None] | None = None,
                      timeout: float = TIMEOUT) -> None:
    """`concurrency` clients, each sending its next request (cycling through `batch`) as soon as the
    previous one is answered, while keep_going(); the requests in flight then finish. on_send is
    called as each request goes out, on_done with its outcome."""
    cursor = iter(range(sys.maxsize))

    async def client(session: aiohttp.ClientSession) -> None:
        while keep_going():
            request = batch[next(cursor) % len(batch)]
            if on_send:
                on_send(request)
            outcome = await send(session, base_url, request)
            on_done(request, outcome)
            if outcome.status is None:
                await asyncio.sleep(0.05)  # no server to talk to: do not spin

    async with client_session(concurrency, timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))


@dataclass
class Scheduled:
    """One open-loop request: when it was due (s from the start), how late it went out, and its outcome,
    whose `seconds` run from the due time."""

    due: float
    send_lag: float
    request: Request
    outcome: Outcome


def arrival_times(rate: float, seconds: float, arrivals: str = "poisson", seed: int = 0, start: float = 0.0) -> list[float]:
    """Due times in [start, start + seconds): every 1/rate s ("constant"), or exponential gaps of mean 1/rate ("poisson")."""
    rng, times, t = random.Random(seed), [], 0.0
    while t < seconds:
        times.append(start + t)
        t += rng.expovariate(rate) if arrivals == "poisson" else 1 / rate
    return times


async def open_loop(base_url: str, batch: list[Request], dues: list[float], timeout: float = TIMEOUT,
                    connections: int = 2048) -> list[Scheduled]:
    """Each request (cycling through `batch`) sent at its due time (s from now, see arrival_times) however
    many are in flight (up to `connections` open at once, far above any server's workers here)."""
    loop = asyncio.get_running_loop()
    async with client_session(connections, timeout) as session:
        start = loop.time() + 0.1

        async def one(i: int, due: float) -> Scheduled:
            await asyncio.sleep(max(0.0, start + due - loop.time()))
            lag = loop.time() - (start + due)
            request = batch[i % len(batch)]
            outcome = await send(session, base_url, request)
            outcome.seconds = loop.time() - (start + due)
            return Scheduled(due, lag, request, outcome)

        return await asyncio.gather(*(one(i, due) for i, due in enumerate(dues)))


def open_loop_summary(results: list[Scheduled], rate: float, seconds: float, within: float = 2.0) -> dict:
    """Goodput (requests answered 200 within `within` s of their due time, per second: an answer that
    comes later is of no use to its client), latency of all answered requests from their due time, what
    was refused or timed out, and how many requests ended (answered or refused) within `within` s."""
    ok = sorted(r.outcome.seconds for r in results if r.outcome.kind(r.request.form) == "ok")
    ended = [r for r in results if r.outcome.status is not None]
    kinds: dict[str, int] = {}
    for r in results:
        kind = r.outcome.kind(r.request.form)
        if kind != "ok":
            kinds[kind] = kinds.get(kind, 0) + 1
    refused = [r.outcome.seconds for r in ended if r.outcome.status != 200]
    lags = sorted(r.send_lag for r in results)
    return {
        "offered_rps": round(rate, 1), "sent": len(results), "answered_ok": len(ok),
        "goodput_rps": round(sum(t <= within for t in ok) / seconds, 1),
        "latency_ms": {**latency_ms(ok), "p99_9": None if not ok else round(percentile(ok, 99.9) * 1000, 3)},
        "refused": len(refused), "refused_latency_ms": latency_ms(refused),
        "timed_out_or_failed": len(results) - len(ended), "errors_by_kind": kinds,
        "ended_within_s": within, "ended_within_share": round(sum(r.outcome.seconds <= within for r in ended) / max(len(results), 1), 5),
        "client_send_lag_ms": {"p50": round(percentile(lags, 50) * 1000, 2), "p99": round(percentile(lags, 99) * 1000, 2)} if lags else None,
    }


# ---------------------------------------------------------------- the command: one measured point


async def measure(base_url: str, batch: list[Request], concurrency: int, warmup: float, duration: float,
                  max_requests: int, timeout: float) -> dict:
    """Load for warmup + duration seconds (or until max_requests were sent); the figures of the
    requests that completed inside the window after the warm-up."""
    loop = asyncio.get_running_loop()
    window_start = loop.time() + warmup
    window_end = window_start + duration
    latencies: list[float] = []
    state = {"issued": 0, "non_200": 0, "failed": 0, "bad_body": 0, "statuses": {}, "sample": None, "first_error": None}
    cpu = {}

    def open_window() -> None:
        cpu["start"] = time.process_time()
        print("MEASURING", flush=True)

    loop.call_at(window_start, open_window)
    loop.call_at(window_end, lambda: cpu.setdefault("end", time.process_time()))

    def on_send(request: Request) -> None:
        state["issued"] += 1

    def on_done(request: Request, outcome: Outcome) -> None:
        if outcome.status is None:
            state["first_error"] = state["first_error"] or outcome.error
        if not window_start <= loop.time() < window_end:
            return
        if outcome.status is None:
            state["failed"] += 1
            return
        state["statuses"][outcome.status] = state["statuses"].get(outcome.status, 0) + 1
        kind = outcome.kind(request.form)
        if kind != "ok":
            state["bad_body" if outcome.status == 200 else "non_200"] += 1
            state["first_error"] = state["first_error"] or f"{kind}: {outcome.body[:200]!r}"
            return
        if state["sample"] is None:
            state["sample"] = outcome.body.decode("utf-8", "replace")[:300]
        latencies.append(outcome.seconds)

    await closed_loop(base_url, batch, concurrency, lambda: loop.time() < window_end and state["issued"] < max_requests,
                      on_done, on_send, timeout)
    cpu.setdefault("start", time.process_time())
    cpu.setdefault("end", time.process_time())
    measured = min(duration, max(loop.time() - window_start, 1e-9))
    return {
        "concurrency": concurrency,
        "duration_s": round(measured, 3),
        "requests": len(latencies),
        "throughput_rps": round(len(latencies) / measured, 1),
        "latency_ms": latency_ms(latencies),
        "errors": state["non_200"] + state["failed"] + state["bad_body"],
        "non_200": state["non_200"],
        "failed": state["failed"],
        "bad_body": state["bad_body"],
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
    parser.add_argument("--bodies", help="JSON file: a list of request bodies (strings) for POST; omitted: GET")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--max-requests", type=int, default=100_000, help="bound on requests issued, warm-up included")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument("--offset", type=int, default=0, help="start position in the body list")
    args = parser.parse_args()
    parts = urlsplit(args.url)
    base_url, path = f"{parts.scheme}://{parts.netloc}", parts.path + (f"?{parts.query}" if parts.query else "")
    form = "ping" if path.endswith("/ping") else "text"  # the answer each request must get
    if args.bodies:
        with open(args.bodies) as f:
            texts = json.load(f)
        shift = args.offset % len(texts)
        batch = [Request(path, t.encode("utf-8"), form=form) for t in texts[shift:] + texts[:shift]]
    else:
        batch = [Request(path, content_type=None, form=form, method="GET")]
    result = asyncio.run(measure(base_url, batch, args.concurrency, args.warmup, args.duration, args.max_requests, args.timeout))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
