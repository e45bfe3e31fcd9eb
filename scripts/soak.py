"""Soak and chaos run against the served sentiment model: does every request get exactly one
answer, for minutes on end, and while a worker is killed?

    .venv/bin/python scripts/soak.py --minutes 5 --concurrency 32
    .venv/bin/python scripts/soak.py --minutes 5 --concurrency 32 --kill-worker

The closed-loop client of bench/loadgen.py (aiohttp, keep-alive) sends real reviews (rt-polarity, train.load_dataset)
in every request form ({"text"}, {"texts"}, text/plain, KServe v2) and counts requests sent,
answered (any HTTP response) and failed, by kind ("500:inference_error", "ServerDisconnectedError",
...). It samples the resident memory of the frontend (JVM) and of the workers after the warm-up,
every 10 s and at the end. With --kill-worker it `kill -9`s one worker at a third and at two thirds
of the run and measures how long TorchServe takes to replace it, how many requests failed, and how
long throughput took to recover. Figures are printed and written to bench/results/soak.json (--out),
with a plot of throughput and memory over the run beside it (soak.png), and the git commit they came
from (bench/provenance.py: from a dirty tree only with --allow-dirty, into bench/results/tmp/).

By default the run gets a private TorchServe (LocalTorchServe: free loopback ports, its own TMPDIR)
on a copy of model_store/sentiment.mar, stopped at the end; --inference/--management point it at
a running server instead (loopback only).

tests/test_reliability.py runs the short versions through `soak()` and `BackgroundLoad` below.
"""

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import urlparse

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.loadgen import JSON, PLAIN_TEXT, TIMEOUT as CLIENT_TIMEOUT, Outcome, Request, closed_loop, latency_ms  # noqa: E402
from bench.provenance import Provenance  # noqa: E402
from sentiment.ops.torchserve import TorchServeAdmin  # noqa: E402

MODEL = "sentiment"
MODEL_STORE = ROOT / "model_store"
RESULTS = ROOT / "bench" / "results" / "soak.json"
BUCKET = 0.25  # s: resolution of the throughput time line


# ---------------------------------------------------------------- requests


def predict_path(model: str = MODEL) -> str:
    return f"/predictions/{model}"


def review_requests(texts: list[str], model: str = MODEL, count: int = 2000, seed: int = 0) -> list[Request]:
    """Good requests built from real reviews, in the four forms the handler accepts
    (about 60 % {"text"}, 15 % {"texts"} of 2-8 reviews, 15 % text/plain, 10 % KServe v2)."""
    rng = random.Random(seed)
    built = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.60:
            built.append(Request(predict_path(model), json.dumps({"text": rng.choice(texts)}).encode(), JSON, "text"))
        elif roll < 0.75:
            batch = rng.sample(texts, rng.randint(2, 8))
            built.append(Request(predict_path(model), json.dumps({"texts": batch}).encode(), JSON, "texts"))
        elif roll < 0.90:
            built.append(Request(predict_path(model), rng.choice(texts).encode(), PLAIN_TEXT, "text"))
        else:
            batch = rng.sample(texts, rng.randint(1, 4))
            body = {"id": f"soak-{i}", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(batch)], "data": batch}]}
            built.append(Request(f"/v2/models/{model}/infer", json.dumps(body).encode(), JSON, "v2"))
    return built


def load_reviews() -> list[str]:
    from sentiment.data import load_dataset  # imports torch: only when reviews are needed

    return load_dataset()[0]


# ---------------------------------------------------------------- load and its figures


class LoadStats:
    """Counters of a load run. sent = answered + failed (no HTTP answer) + in_flight, always."""

    def __init__(self):
        self.started = time.monotonic()
        self.sent = self.answered = self.ok = self.failed = self.in_flight = 0
        self.statuses: Counter = Counter()
        self.errors: Counter = Counter()  # by kind, see Outcome.kind
        self.examples: dict[str, str] = {}  # the first body or exception seen per error kind
        self.latencies: list[float] = []  # of the successful requests
        self.buckets = defaultdict(lambda: [0, 0])  # BUCKET index since start -> [ok, errors]

    def sending(self, request: Request) -> None:
        self.sent += 1
        self.in_flight += 1

    def record(self, request: Request, outcome: Outcome) -> None:
        self.in_flight -= 1
        if outcome.status is None:
            self.failed += 1
        else:
            self.answered += 1
            self.statuses[outcome.status] += 1
        kind = outcome.kind(request.form)
        bucket = self.buckets[int((time.monotonic() - self.started) / BUCKET)]
        if kind == "ok":
            self.ok += 1
            self.latencies.append(outcome.seconds)
            bucket[0] += 1
        else:
            self.errors[kind] += 1
            self.examples.setdefault(kind, outcome.error or outcome.body[:300].decode("utf-8", "replace"))
            bucket[1] += 1

    def rate(self, start: float, end: float) -> float:
        """Successful requests per second between two time.monotonic() instants (whole buckets)."""
        first, last = int((start - self.started) / BUCKET), int((end - self.started) / BUCKET)
        if last <= first:
            return 0.0
        return sum(self.buckets[i][0] for i in range(first, last) if i in self.buckets) / ((last - first) * BUCKET)

    def errors_between(self, start: float, end: float) -> int:
        first, last = int((start - self.started) / BUCKET), int((end - self.started) / BUCKET)
        return sum(self.buckets[i][1] for i in range(first, last + 1) if i in self.buckets)

    def summary(self, seconds: float) -> dict:
        return {
            "sent": self.sent, "answered": self.answered, "ok": self.ok,
            "failed_without_answer": self.failed, "in_flight_at_end": self.in_flight,
            "errors": sum(self.errors.values()), "errors_by_kind": dict(self.errors),
            "error_examples": self.examples, "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "seconds": round(seconds, 2), "ok_per_s": round(self.ok / seconds, 1) if seconds else None,
            "latency_ms": latency_ms(self.latencies),
        }


class BackgroundLoad:
    """The closed loop (bench/loadgen.py) in a thread of its own, counting into LoadStats, so the
    caller can kill, scale or stop servers meanwhile; stop() lets the requests in flight finish.

        with BackgroundLoad(url, batch, 32) as load: ...; load.stats.ok
    """

    def __init__(self, base_url: str, batch: list[Request], concurrency: int, timeout: float = CLIENT_TIMEOUT):
        self.stats = LoadStats()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.timeout = timeout
        self.stopped_at: float | None = None

        def target() -> None:
            try:
                asyncio.run(closed_loop(base_url, batch, concurrency, lambda: not self.stop_event.is_set(),
                                        self.stats.record, self.stats.sending, timeout))
            except BaseException as error:  # reported by stop()
                self.error = error

        self.thread = threading.Thread(target=target, name="load", daemon=True)

    def start(self) -> "BackgroundLoad":
        self.stats.started = time.monotonic()
        self.thread.start()
        return self

    def stop(self, wait: float | None = None) -> float:
        """Stop sending; wait for the requests in flight (at most `wait`, default the client timeout
        plus a margin). Returns how long the drain took; raises if the load thread failed."""
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
            self.stop_event.set()
        self.thread.join(self.timeout + 10 if wait is None else wait)
        if self.thread.is_alive():
            raise TimeoutError(f"{self.stats.in_flight} requests still in flight after {wait} s")
        if self.error is not None:
            raise self.error
        return time.monotonic() - self.stopped_at

    def __enter__(self) -> "BackgroundLoad":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------- the server side


def worker_processes(admin: TorchServeAdmin) -> list[psutil.Process]:
    found = []
    for pid in sorted(admin.ready_pids()):
        try:
            found.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return found


def rss(admin: TorchServeAdmin) -> dict:
    """Resident memory in MB of the frontend (the workers' parent, the JVM) and of the model's workers."""
    procs = worker_processes(admin)
    frontend = procs[0].parent() if procs else None
    mb = 1 << 20
    try:
        return {"frontend_mb": round(frontend.memory_info().rss / mb, 1) if frontend else None,
                "workers_mb": round(sum(p.memory_info().rss for p in procs) / mb, 1),
                "worker_pids": [p.pid for p in procs]}
    except psutil.NoSuchProcess:  # a worker went away while we looked: look again
        return rss(admin)


def kill_worker(admin: TorchServeAdmin, timeout: float = 60) -> dict:
    """kill -9 one READY worker; wait until TorchServe has replaced it. Returns the pid and when."""
    before = admin.ready_pids()
    victim = psutil.Process(min(before))
    killed_at = time.monotonic()
    victim.kill()
    replaced_s = admin.wait_workers(len(before), exclude={victim.pid}, timeout=timeout)
    return {"pid": victim.pid, "killed_at": killed_at, "replaced_s": round(replaced_s, 2),
            "new_pids": sorted(admin.ready_pids() - before)}


def recovery(stats: LoadStats, kill: dict, baseline_s: float = 5.0, horizon_s: float = 10.0, fraction: float = 0.5) -> dict:
    """How the load went through one kill. baseline: successful requests/s in the baseline_s before
    it (skipping the first second of the run); lowest: the lowest 1-s rate after it; at_end: the
    rate in the last 2 s observed (up to horizon_s after the replacement); errors between the kill
    and then; throughput_recovered_s: from the kill to the end of the last 1-s window that ran
    below `fraction` of the baseline (0 if none did)."""
    killed = kill["killed_at"]
    baseline = stats.rate(max(stats.started + 1.0, killed - baseline_s), killed)
    end = min(killed + kill["replaced_s"] + horizon_s, time.monotonic())
    recovered, lowest, t = 0.0, None, killed
    while t + 1 <= end:
        rate = stats.rate(t, t + 1)
        lowest = rate if lowest is None else min(lowest, rate)
        if rate < fraction * baseline:
            recovered = t + 1 - killed
        t += BUCKET
    return {"baseline_ok_per_s": round(baseline, 1), "lowest_ok_per_s_after": round(lowest or 0.0, 1),
            "ok_per_s_at_end": round(stats.rate(end - 2, end), 1), "observed_until_s": round(end - killed, 2),
            "throughput_recovered_s": round(recovered, 2), "errors_after_kill": stats.errors_between(killed, end)}


def soak(inference: str, management: str, batch: list[Request], concurrency: int, seconds: float,
         warmup: float = 3.0, kill_at: tuple[float, ...] = (), min_tail: float = 5.0, model: str = MODEL,
         timeout: float = CLIENT_TIMEOUT, log=print) -> dict:
    """Load for `seconds` (longer if a worker replacement needs it: every kill is followed by at
    least `min_tail` seconds of load), killing a worker at each second of `kill_at`; memory sampled
    after `warmup`, every 10 s and just before the load stops. Returns the figures."""
    admin = TorchServeAdmin(management, model)
    kills, memory, samples, sampling_done = [], {}, [], threading.Event()
    load = BackgroundLoad(inference, batch, concurrency, timeout).start()

    def sample_memory() -> dict:
        sample = rss(admin)
        samples.append({"t_s": round(time.monotonic() - load.stats.started, 1),
                        "frontend_mb": sample["frontend_mb"], "workers_mb": sample["workers_mb"]})
        return sample

    def keep_sampling() -> None:  # in its own thread, so kills and their waits do not leave gaps
        while not sampling_done.wait(10.0):
            sample_memory()

    sampler = threading.Thread(target=keep_sampling, name="memory", daemon=True)
    try:
        time.sleep(warmup)
        memory["start"] = sample_memory()
        sampler.start()
        for at in sorted(kill_at):
            time.sleep(max(0.0, load.stats.started + at - time.monotonic()))
            kill = kill_worker(admin)
            log(f"killed worker {kill['pid']} at {at:.0f} s; replaced in {kill['replaced_s']} s")
            kills.append(kill)
        end = max(load.stats.started + seconds, *(k["killed_at"] + k["replaced_s"] + min_tail for k in kills), 0)
        while time.monotonic() < end:
            time.sleep(min(10.0, end - time.monotonic()))
            log(f"{time.monotonic() - load.stats.started:6.0f} s: sent {load.stats.sent}, ok {load.stats.ok}, errors {dict(load.stats.errors)}")
        sampling_done.set()
        sampler.join()
        memory["end"] = sample_memory()
    finally:
        sampling_done.set()
        drain_s = load.stop()
    memory["samples"] = samples
    elapsed = load.stopped_at - load.stats.started
    report = load.stats.summary(elapsed)
    for kill in kills:
        kill.update(recovery(load.stats, kill))
        kill["at_s"] = round(kill.pop("killed_at") - load.stats.started, 2)
    started = load.stats.started
    report.update(concurrency=concurrency, drain_s=round(drain_s, 2), rss=memory, kills=kills,
                  workers=len(memory["end"]["worker_pids"]) if "end" in memory else None,
                  ok_per_s_by_second=[round(load.stats.rate(started + i, started + i + 1)) for i in range(int(elapsed))])
    return report


def rss_growth_ok(start: dict, end: dict, key: str, fraction: float = 0.5, slack_mb: float = 50) -> bool:
    """Lenient leak check: end within start * (1 + fraction) + slack_mb."""
    return end[key] <= start[key] * (1 + fraction) + slack_mb


def plot(report: dict, path: Path) -> None:
    """Successful requests per second, and the RSS of the frontend and the workers, over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (load_ax, memory_ax) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    load_ax.plot(range(len(report["ok_per_s_by_second"])), report["ok_per_s_by_second"], lw=0.8)
    load_ax.set_ylabel("successful requests/s")
    load_ax.set_title(f"{report['concurrency']} clients, {report['workers']} workers: {report['sent']:,} sent, "
                      f"{report['answered']:,} answered, {report['errors']} errors")
    samples = report["rss"]["samples"]
    for key, label in (("frontend_mb", "frontend (JVM)"), ("workers_mb", "workers (sum)")):
        memory_ax.plot([s["t_s"] for s in samples], [s[key] for s in samples], marker=".", label=label)
    memory_ax.set_ylabel("RSS (MB)")
    memory_ax.set_xlabel("seconds")
    memory_ax.set_ylim(bottom=0)
    memory_ax.legend()
    for kill in report["kills"]:
        for ax in (load_ax, memory_ax):
            ax.axvline(kill["at_s"], color="red", ls="--", lw=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- command line


def loopback(url: str) -> str:
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to send load to {url}: loopback addresses only")
    return url.rstrip("/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--kill-worker", action="store_true", help="kill -9 a worker at 1/3 and 2/3 of the run")
    parser.add_argument("--kills", type=int, default=2, help="how many kills with --kill-worker (evenly spread)")
    parser.add_argument("--workers", type=int, default=None, help="scale the model to N workers first (default: 2 with --kill-worker, else as configured)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the first memory sample")
    parser.add_argument("--inference", help="inference address of a running TorchServe (default: start a private one)")
    parser.add_argument("--management", help="its management address")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--allow-dirty", action="store_true", help="run from a dirty tree; bench/results/ files go to bench/results/tmp/")
    args = parser.parse_args()
    run = Provenance(args.allow_dirty)  # refuses a dirty tree now, not after the run

    seconds = args.minutes * 60
    kill_at = tuple(seconds * (i + 1) / (args.kills + 1) for i in range(args.kills)) if args.kill_worker else ()
    worker_count = args.workers or (2 if args.kill_worker else None)
    batch = review_requests(load_reviews())
    server, store = None, None
    try:
        if args.inference or args.management:
            if not (args.inference and args.management):
                raise SystemExit("--inference and --management go together")
            inference, management = loopback(args.inference), loopback(args.management)
        else:
            from sentiment.ops.torchserve import LocalTorchServe

            store = Path(tempfile.mkdtemp(prefix="soak-store-"))
            shutil.copy(MODEL_STORE / f"{MODEL}.mar", store)  # a private copy: `make archive` may rewrite the original meanwhile
            server = LocalTorchServe(store).start()
            inference, management = server.inference, server.management
            print(f"private TorchServe: {inference}", flush=True)
        if worker_count:
            TorchServeAdmin(management).scale(worker_count)
        print(f"soak: {args.minutes} min, {args.concurrency} clients, kills at {[round(k) for k in kill_at]} s", flush=True)
        report = soak(inference, management, batch, args.concurrency, seconds, args.warmup, kill_at,
                      log=lambda line: print(line, flush=True))
    finally:
        if server is not None:
            server.stop()
        if store is not None:
            shutil.rmtree(store, ignore_errors=True)
    report.update(minutes=args.minutes, server="private" if server else inference,
                  finished=time.strftime("%Y-%m-%dT%H:%M:%S"), provenance=run.record())
    out = run.target(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in report.items() if k != "ok_per_s_by_second"}, indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    # Without chaos every request must succeed; with it, failures are expected around each kill.
    sys.exit(1 if report["in_flight_at_end"] or (report["errors"] and not kill_at) else 0)


if __name__ == "__main__":
    main()
