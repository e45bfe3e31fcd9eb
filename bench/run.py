"""Serving benchmark: naive FastAPI baseline vs TorchServe (workers x batch size grid), with ceilings.

    .venv/bin/python bench/run.py            # `make bench`: about 6 minutes on 2 busy cores
    .venv/bin/python bench/run.py --quick    # 2 s points, no frontend variants: a smoke test (~3 min)

Measures, in one run, on loopback, each case at 1, 8 and 32 concurrent closed-loop clients
(bench/loadgen.py, its own process; fixed warm-up, fixed duration, bounded request count), with
real rt-polarity review texts (short held-out snippets and long multi-snippet reviews):

  naive       bench/naive_app.py: FastAPI + uvicorn, eager model, one request at a time
              (and one point with TCP_NODELAY off, to show the Nagle / delayed-ACK stall)
  ping        TorchServe GET /ping: the frontend's own ceiling
  shipped     TorchServe with the archive's own model-config.yaml (as `make serve` runs it)
  wXbY        TorchServe, X workers, batch size Y, max batch delay 5 ms (re-registered through
              the management API); then wXbYdZ, a max-batch-delay sweep of the recommended one
  h2h_*       the target comparison at 32 clients, interleaved rounds so that all cases share the
              same background load: naive, TorchServe (final configuration), /ping, and the same
              TorchServe configuration with one Netty thread (a second server)
  ceilings    in-process: text.py encoding and the TorchScript / eager / ONNX Runtime forward on
              batches of 1 and 64 texts; a TorchServe worker's own per-batch cost by step
              (bench/worker_profile.py)

Writes bench/results/results.json (machine, versions, configuration, every number),
throughput_latency.png and summary.md. Every server it starts (free ports, private TMPDIR and
TEMP) is stopped before it exits.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil
import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.append(str(ROOT))  # after bench/, so bench's own modules win

from archive import extract  # noqa: E402  (bench/archive.py)
from local_server import LocalTorchServe, free_port  # noqa: E402

PY = sys.executable
RESULTS = BENCH / "results"
TMP = RESULTS / "tmp"  # git-ignored scratch: request bodies, a private copy of the archive
MODEL = "sentiment"
BUILD = ROOT / "build" / "v1"
EXPORT = BUILD / "export"
SHIPPED_MAR = ROOT / "model_store" / f"{MODEL}.mar"
DATA_DIR = ROOT.parent / "shared" / "data" / "rt-polarity"

CONCURRENCY = (1, 8, 32)
GRID_WORKERS = (1, 2)
GRID_BATCH = (1, 8, 32)
GRID_DELAY_MS = 5
DELAY_SWEEP_MS = (1, 2, 10)  # besides GRID_DELAY_MS, for the recommended workers x batch size
H2H_ROUNDS = 3  # interleaved rounds of the target comparison at the top concurrency
# Frontend settings tried against config.properties in the head-to-head, each on its own server.
# fresh_jvm is the control: a second server with config.properties unchanged, started and warmed
# exactly like the variants (a fresh JVM spends ~3x the frontend CPU per request until its JIT has run).
VARIANTS = {"fresh_jvm": {}, "netty1": {"number_of_netty_threads": "1", "netty_client_threads": "1"}}
H2H_WARM_S = 5.0  # an unrecorded burst per head-to-head server before the rounds
JVM_WARM_S = 8.0  # an unrecorded burst of predictions before the first TorchServe point
PREWARM_REQUESTS = 100  # sent one by one after each (re-)registration, before any warm-up
WARMUP_S, DURATION_S = 1.0, 3.0
MAX_REQUESTS = 100_000  # per point, warm-up included: a bound far above what 5 s can reach here
BODIES, LONG_FRACTION, SEED = 2000, 0.2, 0


# ---------------------------------------------------------------- inputs and environment

def request_bodies(max_chars: int, n: int = BODIES, long_fraction: float = LONG_FRACTION, seed: int = SEED) -> tuple[list[str], dict]:
    """JSON bodies {"text": ...} from the rt-polarity data: single snippets (short), and a share of
    long reviews made of 5-40 snippets of one polarity (cut at the signature's max_chars), in a fixed
    random order. Read straight from the data files, so no project module is imported here."""
    rng = random.Random(seed)
    by_label = {}
    for name in ("rt-polarity.pos", "rt-polarity.neg"):
        lines = (DATA_DIR / name).read_bytes().decode("latin-1").splitlines()
        by_label[name] = [line.strip() for line in lines if line.strip()]
    snippets = [t for pool in by_label.values() for t in pool]
    chosen = []
    for _ in range(n):
        if rng.random() < long_fraction:
            pool = by_label[rng.choice(sorted(by_label))]
            chosen.append(" ".join(rng.sample(pool, rng.randint(5, 40)))[:max_chars])
        else:
            chosen.append(rng.choice(snippets))
    chars = sorted(len(t) for t in chosen)
    stats = {
        "count": n, "long_fraction": long_fraction, "seed": seed,
        "source": f"{DATA_DIR.name}: single snippets, and long reviews of 5-40 snippets of one polarity joined",
        "chars": {"mean": round(statistics.mean(chars), 1), "p50": chars[n // 2], "p90": chars[int(n * 0.9)],
                  "max": chars[-1], "min": chars[0]},
        "body_bytes_mean": round(statistics.mean(len(json.dumps({"text": t}).encode()) for t in chosen), 1),
    }
    return [json.dumps({"text": t}) for t in chosen], stats


def machine_info() -> dict:
    cpu_model = ""
    try:
        cpu_model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "logical_cpus": psutil.cpu_count(),
        "physical_cpus": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }


def versions() -> dict:
    import aiohttp
    import fastapi
    import onnxruntime
    import torch
    import uvicorn

    from importlib.metadata import version
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    git = lambda *args: subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return {
        "torch": torch.__version__, "torchserve": version("torchserve"), "torch_model_archiver": version("torch-model-archiver"),
        "onnxruntime": onnxruntime.__version__, "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
        "aiohttp": aiohttp.__version__, "java": java[0] if java else None,
        "git_head": git("rev-parse", "--short", "HEAD"), "git_dirty_files": git("status", "--porcelain").splitlines(),
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- processes and CPU accounting

def tree(process: psutil.Process | None) -> list[psutil.Process]:
    if process is None or not process.is_running():
        return []
    return [process] + process.children(recursive=True)


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def system_busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))


class CpuWatch:
    """CPU seconds of named process groups and of the whole machine between start() and stop().
    The groups are resolved once at start(): processes born later (a restarted worker) are missed."""

    def __init__(self, groups: dict):
        self.groups = groups

    def start(self) -> None:
        self.resolved = {name: get() for name, get in self.groups.items()}
        self.before = {name: cpu_seconds(procs) for name, procs in self.resolved.items()}
        self.busy_before, self.t0 = system_busy_seconds(), time.monotonic()

    def stop(self) -> dict:
        elapsed = time.monotonic() - self.t0
        cores = {name: round((cpu_seconds(procs) - self.before[name]) / elapsed, 3) for name, procs in self.resolved.items()}
        cores["machine_busy"] = round((system_busy_seconds() - self.busy_before) / elapsed, 3)
        return cores


# ---------------------------------------------------------------- TorchServe helpers

PROMETHEUS = re.compile(r'^(ts_inference_requests_total|ts_inference_latency_microseconds|ts_queue_latency_microseconds)\{[^}]*\} ([0-9.eE+-]+)$')
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3}) .*Backend received inference")


def frontend_counters(ts: LocalTorchServe) -> dict:
    counters = {}
    try:
        for line in requests.get(ts.metrics + "/metrics", timeout=5).text.splitlines():
            match = PROMETHEUS.match(line)
            if match:
                counters[match.group(1)] = counters.get(match.group(1), 0.0) + float(match.group(2))
    except requests.RequestException:
        pass
    return counters


def batches_between(ts: LocalTorchServe, start_wall: float, end_wall: float, offset: int) -> tuple[int, int]:
    """Worker batches ("Backend received inference" in model_log.log) stamped inside the window; new file offset."""
    path = ts.home / "logs" / "model_log.log"
    if not path.exists():
        return 0, offset
    with path.open("rb") as f:
        f.seek(offset)
        chunk = f.read()
    count = 0
    for line in chunk.decode("utf-8", "replace").splitlines():
        match = LOG_TIME.match(line)
        if match:
            stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S,%f").timestamp()
            count += start_wall <= stamp < end_wall
    return count, offset + len(chunk)


@contextmanager
def torchserve(store: Path, config: dict | None = None):
    """A private TorchServe: free HTTP and gRPC ports, its own TMPDIR and TEMP (the JVM puts the
    worker sockets in java.io.tmpdir, /tmp by default, where another TorchServe's would collide)."""
    overrides = {"grpc_inference_port": str(free_port()), "grpc_management_port": str(free_port()), **(config or {})}
    ts = LocalTorchServe(store, models=f"{MODEL}.mar", config=overrides)
    ts.env["TEMP"] = str(ts.home)
    try:
        started = time.monotonic()
        ts.start()
        log(f"TorchServe up in {time.monotonic() - started:.1f} s ({ts.inference})")
        yield ts
    finally:
        if ts.home.exists():  # LocalTorchServe.start() already stopped it if it never became healthy
            ts.stop()


def register(ts: LocalTorchServe, workers: int, batch_size: int, delay_ms: int) -> dict:
    """(Re-)register the archive with this batching, then scale to `workers`; returns the model description."""
    requests.delete(f"{ts.management}/models/{MODEL}", timeout=60)
    response = requests.post(f"{ts.management}/models", timeout=120, params={
        "url": f"{MODEL}.mar", "batch_size": batch_size, "max_batch_delay": delay_ms,
        "initial_workers": 1, "synchronous": "true"})
    response.raise_for_status()
    return scale(ts, workers)


def prewarm(ts: LocalTorchServe) -> None:
    """A few requests through every fresh worker (TorchScript's profiling runs, first-call imports)."""
    with requests.Session() as session:
        for i in range(PREWARM_REQUESTS):
            session.post(f"{ts.inference}/predictions/{MODEL}", json={"text": f"warm-up review number {i}, a fine film"}, timeout=10)


def scale(ts: LocalTorchServe, workers: int) -> dict:
    response = requests.put(f"{ts.management}/models/{MODEL}", timeout=120,
                            params={"min_worker": workers, "max_worker": workers, "synchronous": "true"})
    response.raise_for_status()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        description = requests.get(f"{ts.management}/models/{MODEL}", timeout=10).json()[0]
        if sum(w["status"] == "READY" for w in description["workers"]) == workers:
            prewarm(ts)
            return description
        time.sleep(0.2)
    raise RuntimeError(f"{workers} workers not READY: {description['workers']}")


# ---------------------------------------------------------------- one load point

class Bench:
    def __init__(self, args, bodies_file: Path):
        self.args, self.bodies_file = args, bodies_file
        self.points: list[dict] = []
        self.log_offsets: dict[str, int] = {}

    def point(self, case: str, url: str, concurrency: int, config: dict, groups: dict, post: bool = True,
              ts: LocalTorchServe | None = None, **extra) -> dict:
        cmd = [PY, str(BENCH / "loadgen.py"), "--url", url, "--concurrency", str(concurrency),
               "--warmup", str(self.args.warmup), "--duration", str(self.args.duration),
               "--max-requests", str(self.args.max_requests), "--offset", str(len(self.points) * 97)]
        if post:
            cmd += ["--bodies", str(self.bodies_file)]
        watch = CpuWatch(groups)
        stderr_file = TMP / "loadgen.err"
        with stderr_file.open("w") as stderr:
            loadgen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            line = loadgen.stdout.readline()
            if line.strip() != "MEASURING":
                loadgen.wait(timeout=30)
                raise RuntimeError(f"loadgen: {line!r} {stderr_file.read_text()[-2000:]}")
            wall_start = time.time()
            watch.start()
            counters_before = frontend_counters(ts) if ts else {}
            time.sleep(max(0.0, wall_start + self.args.duration - time.time()))
            cores = watch.stop()
            wall_end = time.time()
            counters_after = frontend_counters(ts) if ts else {}
            out, _ = loadgen.communicate(timeout=60)
        finally:
            if loadgen.poll() is None:
                loadgen.kill()
                loadgen.wait()
        if loadgen.returncode != 0:
            raise RuntimeError(f"loadgen failed ({loadgen.returncode}): {stderr_file.read_text()[-2000:]}")
        result = json.loads(out.strip().splitlines()[-1])
        result.pop("pid", None)
        # the load generator reports its own CPU time (client_cpu_cores)
        ours = result["client_cpu_cores"] + sum(v for k, v in cores.items() if k != "machine_busy")
        cores["other_processes"] = round(max(0.0, cores["machine_busy"] - ours), 3)
        record = {"case": case, "config": config, **result, "cpu_cores": cores, **extra}
        if ts is not None:
            record["torchserve"] = self.torchserve_side(ts, counters_before, counters_after, wall_start, wall_end)
            record["avg_batch_size"] = record["torchserve"].get("avg_batch_size")
        self.points.append(record)
        lat = result["latency_ms"]
        log(f"{case:>14} c={concurrency:<3} {result['throughput_rps']:>8.1f} req/s  p50 {lat['p50']} ms  p99 {lat['p99']} ms  "
            f"errors {result['errors']}  client cpu {result['client_cpu_cores']:.2f}  other cpu {cores['other_processes']:.2f}"
            + (f"  batch {record.get('avg_batch_size')}" if ts else ""))
        return record

    def burst(self, url: str, concurrency: int, seconds: float, post: bool = True) -> None:
        """Unrecorded load, to warm a fresh server up."""
        cmd = [PY, str(BENCH / "loadgen.py"), "--url", url, "--concurrency", str(concurrency), "--warmup", "0",
               "--duration", str(seconds), "--max-requests", str(self.args.max_requests)]
        subprocess.run(cmd + (["--bodies", str(self.bodies_file)] if post else []), capture_output=True, timeout=seconds + 60)

    def torchserve_side(self, ts, before: dict, after: dict, wall_start: float, wall_end: float) -> dict:
        key = str(ts.home)
        batches, self.log_offsets[key] = batches_between(ts, wall_start, wall_end, self.log_offsets.get(key, 0))
        n = after.get("ts_inference_requests_total", 0) - before.get("ts_inference_requests_total", 0)
        side = {"frontend_requests": int(n), "worker_batches": batches}
        if n > 0:
            side["frontend_latency_ms_mean"] = round((after["ts_inference_latency_microseconds"] - before["ts_inference_latency_microseconds"]) / n / 1e3, 3)
            side["frontend_queue_ms_mean"] = round((after["ts_queue_latency_microseconds"] - before["ts_queue_latency_microseconds"]) / n / 1e3, 3)
            if batches:
                side["avg_batch_size"] = round(n / batches, 2)
        return side


# ---------------------------------------------------------------- the cases

def naive_server(nodelay: bool):
    port = free_port()
    log_file = TMP / f"naive_app_{port}.log"
    with log_file.open("w") as out:
        process = subprocess.Popen([PY, str(BENCH / "naive_app.py"), "--port", str(port), "--nodelay", str(int(nodelay)),
                                    "--model-dir", str(TMP / "archive")], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"naive_app exited: {log_file.read_text()[-3000:]}")
        try:
            if requests.get(url + "/ping", timeout=1).ok:
                return process, url
        except requests.RequestException:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("naive_app did not start")


def stop_process(process: subprocess.Popen) -> None:
    for proc in reversed(tree(psutil.Process(process.pid)) if process.poll() is None else []):
        proc.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_naive(bench: Bench, results: dict, sample_bodies: list[str]) -> None:
    # The Nagle / delayed-ACK check: TCP_NODELAY off on the server's sockets, one client.
    process, url = naive_server(nodelay=False)
    try:
        group = {"server": lambda: tree(psutil.Process(process.pid))}
        bench.point("naive_nodelay_off", url + f"/predictions/{MODEL}", 1, {"tcp_nodelay": False}, group)
    finally:
        stop_process(process)
    process, url = naive_server(nodelay=True)
    try:
        results["naive_sample_predictions"] = [requests.post(url + f"/predictions/{MODEL}", data=b.encode(), timeout=10,
                                                             headers={"Content-Type": "application/json"}).json() for b in sample_bodies]
        group = {"server": lambda: tree(psutil.Process(process.pid))}
        for c in CONCURRENCY:
            bench.point("naive", url + f"/predictions/{MODEL}", c, {"tcp_nodelay": True, "model": "archive TorchScript", "torch_threads": 1}, group)
    finally:
        stop_process(process)


def ts_groups(ts: LocalTorchServe) -> dict:
    return {"frontend": lambda: [ts.frontend] if ts.frontend else [],
            "workers": lambda: ts.frontend.children(recursive=True) if ts.frontend else []}


def run_torchserve(bench: Bench, results: dict, store: Path, sample_bodies: list[str]) -> None:
    with torchserve(store) as ts:
        predict = f"{ts.inference}/predictions/{MODEL}"
        groups = ts_groups(ts)
        for c in CONCURRENCY:
            bench.point("ping", ts.inference + "/ping", c, {}, groups, post=False, ts=ts)
        shipped = requests.get(f"{ts.management}/models/{MODEL}", timeout=10).json()[0]
        shipped_config = {k: shipped[k] for k in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")}
        results["shipped_model_config"] = shipped_config
        results["torchserve_sample_predictions"] = [requests.post(predict, data=b.encode(), timeout=10,
                                                                  headers={"Content-Type": "application/json"}).json() for b in sample_bodies]
        log(f"warming the JVM up: {JVM_WARM_S:.0f} s of predictions at {CONCURRENCY[-1]} clients, not recorded")
        bench.burst(predict, CONCURRENCY[-1], JVM_WARM_S)
        for c in CONCURRENCY:
            bench.point("shipped", predict, c, {"workers": len(shipped["workers"]), "batch_size": shipped["batchSize"],
                                                 "max_batch_delay_ms": shipped["maxBatchDelay"]}, groups, ts=ts)
        for batch_size in GRID_BATCH:
            for i, workers in enumerate(GRID_WORKERS):
                started = time.monotonic()
                register(ts, workers, batch_size, GRID_DELAY_MS) if i == 0 else scale(ts, workers)
                log(f"registered w{workers} b{batch_size} d{GRID_DELAY_MS} in {time.monotonic() - started:.1f} s")
                config = {"workers": workers, "batch_size": batch_size, "max_batch_delay_ms": GRID_DELAY_MS}
                for c in CONCURRENCY:
                    bench.point(f"w{workers}b{batch_size}", predict, c, config, groups, ts=ts, grid=True)
        choice = choose(bench.points)
        results["choice"] = choice
        workers, batch_size = choice["recommended"]["workers"], choice["recommended"]["batch_size"]
        for delay in DELAY_SWEEP_MS if batch_size > 1 else ():  # no delay without batching
            register(ts, workers, batch_size, delay)
            config = {"workers": workers, "batch_size": batch_size, "max_batch_delay_ms": delay}
            for c in CONCURRENCY:
                bench.point(f"w{workers}b{batch_size}d{delay}", predict, c, config, groups, ts=ts, sweep=True)
        final = {"workers": workers, "batch_size": batch_size, "max_batch_delay_ms": best_delay(delay_sweep(bench.points, choice["recommended"]))}
        results["final_config"] = final
        register(ts, final["workers"], final["batch_size"], final["max_batch_delay_ms"])
        head_to_head(bench, results, ts, store, final)


def head_to_head(bench: Bench, results: dict, ts: LocalTorchServe, store: Path, final: dict) -> None:
    """The target comparisons at the top concurrency, interleaved so that every case sees the same
    background load: naive, TorchServe with the final configuration, its /ping, and (unless
    --skip-variants) the same configuration on one more TorchServe per VARIANTS entry, in turn,
    H2H_ROUNDS times. The targets are computed from the medians of these rounds."""
    top = CONCURRENCY[-1]
    process, naive_url = naive_server(nodelay=True)
    try:
        with ExitStack() as stack:
            cases = [("naive", naive_url + f"/predictions/{MODEL}", {"server": lambda: tree(psutil.Process(process.pid))}, True, None, {}),
                     ("torchserve", f"{ts.inference}/predictions/{MODEL}", ts_groups(ts), True, ts, final),
                     ("ping", ts.inference + "/ping", ts_groups(ts), False, ts, {})]
            for name, overrides in ({} if bench.args.skip_variants else VARIANTS).items():
                server = stack.enter_context(torchserve(store, overrides))
                register(server, final["workers"], final["batch_size"], final["max_batch_delay_ms"])
                cases.append((f"torchserve_{name}", f"{server.inference}/predictions/{MODEL}", ts_groups(server), True, server,
                              {**final, **overrides}))
            for _, url, _, post, _, _ in cases:
                bench.burst(url, top, H2H_WARM_S, post)
            for round_ in range(1, H2H_ROUNDS + 1):
                shift = (round_ - 1) % len(cases)  # rotate the order, so no case always follows the same one
                for name, url, groups, post, server, config in cases[shift:] + cases[:shift]:
                    bench.point(f"h2h_{name}", url, top, config, groups, post=post, ts=server, h2h=round_)
    finally:
        stop_process(process)


# ---------------------------------------------------------------- analysis

def at(points: list[dict], case: str, concurrency: int) -> dict | None:
    return next((p for p in points if p["case"] == case and p["concurrency"] == concurrency), None)


def choose(points: list[dict]) -> dict:
    """workers x batch size, from the grid (max batch delay 5 ms for all): tuned = the highest
    throughput at the top concurrency; recommended = the fewest workers, then the smallest batch,
    among the error-free configurations within 10 % of that throughput (the delay is chosen next,
    by the sweep, so the latency that batching adds at low load is not held against batching here)."""
    top = CONCURRENCY[-1]
    grid = list(dict.fromkeys(p["case"] for p in points if p.get("grid")))
    config_of = {p["case"]: p["config"] for p in points if p.get("grid")}
    rps = {case: at(points, case, top)["throughput_rps"] for case in grid}
    tuned = max(grid, key=rps.get)
    clean = [case for case in grid if not any(p["errors"] for p in points if p["case"] == case)] or grid
    recommended = min((case for case in clean if rps[case] >= 0.9 * rps[tuned]),
                      key=lambda case: (config_of[case]["workers"], config_of[case]["batch_size"]), default=tuned)
    return {"tuned_case": tuned, "tuned": config_of[tuned], "recommended_case": recommended,
            "recommended": config_of[recommended], f"throughput_at_{top}": rps, "rule": " ".join(choose.__doc__.split())}


def delay_sweep(points: list[dict], config: dict) -> dict:
    """{max_batch_delay_ms: {concurrency: numbers}} for this workers x batch size (grid and sweep points)."""
    swept = {}
    for p in points:
        if (p.get("grid") or p.get("sweep")) and p["config"].get("workers") == config["workers"] \
                and p["config"].get("batch_size") == config["batch_size"]:
            swept.setdefault(p["config"]["max_batch_delay_ms"], {})[p["concurrency"]] = {
                "rps": p["throughput_rps"], "p50": p["latency_ms"]["p50"], "p99": p["latency_ms"]["p99"], "avg_batch": p.get("avg_batch_size")}
    return dict(sorted(swept.items()))


def best_delay(swept: dict) -> int:
    """maxBatchDelay: the smallest delay (the least latency added when a batch does not fill, e.g.
    at one client) that keeps 90 % of the best throughput over the delays at the top concurrency."""
    if len(swept) < 2:
        return next(iter(swept), GRID_DELAY_MS)
    top = CONCURRENCY[-1]
    best = max(rows[top]["rps"] for rows in swept.values())
    return min(d for d, rows in swept.items() if rows[top]["rps"] >= 0.9 * best)


def h2h_medians(points: list[dict]) -> dict:
    """Per head-to-head case: the median (and range) over the interleaved rounds."""
    out = {}
    for case in dict.fromkeys(p["case"] for p in points if p.get("h2h")):
        rows = [p for p in points if p["case"] == case]
        rps = [p["throughput_rps"] for p in rows]
        p99 = [p["latency_ms"]["p99"] for p in rows if p["latency_ms"]["p99"] is not None]
        out[case.removeprefix("h2h_")] = {
            "config": rows[0]["config"], "rounds": len(rows),
            "throughput_rps": round(statistics.median(rps), 1), "throughput_range": [min(rps), max(rps)],
            "p50_ms": round(statistics.median(p["latency_ms"]["p50"] for p in rows), 3),
            "p99_ms": round(statistics.median(p99), 3) if p99 else None, "p99_range": [min(p99), max(p99)] if p99 else None,
            "errors": sum(p["errors"] for p in rows),
            "client_cpu_cores": round(statistics.median(p["client_cpu_cores"] for p in rows), 3),
            "other_processes_cpu_cores": round(statistics.median(p["cpu_cores"]["other_processes"] for p in rows), 3),
            "avg_batch_size": rows[0].get("avg_batch_size") and round(statistics.median(p.get("avg_batch_size") or 0 for p in rows), 2),
        }
    return out


def ratio_check(value: float, target: float, higher_is_better: bool) -> dict:
    met = value >= target if higher_is_better else value <= target
    return {"ratio": round(value, 3), "target": f"{'>=' if higher_is_better else '<='} {target}", "met": met,
            "margin": f"{(value / target - 1) * 100:+.0f} % vs target"}


def targets(results: dict) -> dict:
    """The targets at the top concurrency: primarily from the interleaved head-to-head medians,
    and, for reference, from the single-pass grid (tuned = best grid point at the top concurrency)."""
    points, ceilings, profile = results["points"], results["ceilings"], results["worker_profile"]
    top = CONCURRENCY[-1]
    forward64 = ceilings["batches"]["64"]["torchscript"]["texts_per_s"]
    serve64 = ceilings["batches"]["64"]["torchscript"]["encode_plus_forward_texts_per_s"]

    def block(ts_rps, ts_p99, naive_rps, naive_p99, ping_rps, batch_size) -> dict:
        worker = profile["batch_sizes"].get(str(batch_size))
        return {
            "throughput_rps": ts_rps, "p99_ms": ts_p99, "naive_throughput_rps": naive_rps, "naive_p99_ms": naive_p99, "ping_rps": ping_rps,
            "throughput_vs_naive": ratio_check(ts_rps / naive_rps, 1.0, True),
            "p99_vs_naive": ratio_check(ts_p99 / naive_p99, 1.5, False),
            "throughput_vs_ping": ratio_check(ts_rps / ping_rps, 0.5, True),
            "vs_forward_only_ceiling_b64": {"ratio": round(ts_rps / forward64, 4), "ceiling_texts_per_s": forward64,
                                            "note": "TorchScript forward alone, one thread, batches of 64 pre-encoded texts"},
            "vs_encode_plus_forward_ceiling_b64": {"ratio": round(ts_rps / serve64, 3), "ceiling_texts_per_s": serve64,
                                                   "note": "text.py encode + forward, one thread, one core; 2 cores would double it"},
            "vs_worker_in_process_ceiling": {"ratio": round(ts_rps / worker["worker_ceiling_rps"], 3) if worker else None,
                                             "ceiling_rps": worker["worker_ceiling_rps"] if worker else None,
                                             "note": f"one worker's whole Python path (JSON, handler, response) at batch {batch_size}, in-process, one core"},
        }

    out = {}
    h2h = results.get("head_to_head", {})
    if {"naive", "torchserve", "ping"} <= h2h.keys():
        n, t, g = h2h["naive"], h2h["torchserve"], h2h["ping"]
        out["head_to_head"] = {"case": "final configuration " + json.dumps(t["config"]), "concurrency": top,
                               "source": f"medians of {t['rounds']} interleaved rounds",
                               **block(t["throughput_rps"], t["p99_ms"], n["throughput_rps"], n["p99_ms"], g["throughput_rps"], t["config"]["batch_size"])}
    tuned = at(points, results["choice"]["tuned_case"], top)
    naive, ping = at(points, "naive", top), at(points, "ping", top)
    out["grid_pass"] = {"case": results["choice"]["tuned_case"], "concurrency": top, "source": "single pass, points measured minutes apart",
                        **block(tuned["throughput_rps"], tuned["latency_ms"]["p99"], naive["throughput_rps"], naive["latency_ms"]["p99"],
                                ping["throughput_rps"], tuned["config"]["batch_size"])}
    return out


def breakdown(points: list[dict], profile: dict) -> dict:
    """Where one request's time goes on 1 worker, batch size 1, 1 client (w1b1, c=1), and CPU per request under load."""
    point = at(points, "w1b1", 1)
    worker = profile["batch_sizes"]["1"]["per_request_us"]
    side = point["torchserve"]
    client_ms = point["latency_ms"]["mean"]
    frontend_ms = side.get("frontend_latency_ms_mean")
    worker_ms = profile["batch_sizes"]["1"]["worker_total_per_request_us"] / 1e3
    steps_ms = {
        "json_decode_and_framing": worker["decode"] / 1e3,
        "handler_preprocess": worker.get("preprocess", 0) / 1e3,
        "tokenise_encode": worker.get("encode", 0) / 1e3,
        "forward": worker.get("forward", 0) / 1e3,
        "sigmoid_and_other_inference": worker.get("inference_other", 0) / 1e3,
        "handler_postprocess": worker.get("postprocess", 0) / 1e3,
        "response_json_and_framing": worker.get("response", 0) / 1e3,
        "metrics_and_ts_service": worker.get("predict_other", 0) / 1e3,
    }
    result = {"point": "w1b1 at concurrency 1 (one request in flight)", "client_latency_ms_mean": client_ms,
              "client_latency_ms_p50": point["latency_ms"]["p50"],
              "frontend_latency_ms_mean": frontend_ms, "frontend_queue_ms_mean": side.get("frontend_queue_ms_mean"),
              "worker_python_ms_in_process": round(worker_ms, 3),
              "worker_steps_ms": {k: round(v, 4) for k, v in steps_ms.items()}}
    if frontend_ms is not None:
        result["http_client_and_loopback_ms"] = round(client_ms - frontend_ms, 3)
        result["frontend_netty_ipc_scheduling_ms"] = round(frontend_ms - worker_ms, 3)
        result["shares_of_client_latency"] = {
            "client + HTTP on loopback (outside the frontend's clock)": round((client_ms - frontend_ms) / client_ms, 3),
            "frontend (Netty, queue, batching) + Unix-socket IPC + worker wake-up": round((frontend_ms - worker_ms) / client_ms, 3),
            "worker Python: JSON, handler, response": round(worker_ms / client_ms, 3),
            "of which tokenise+encode": round(steps_ms["tokenise_encode"] / client_ms, 3),
            "of which forward": round(steps_ms["forward"] / client_ms, 3),
        }
    # CPU time per request under load: the servers' processes (psutil) and the client's own.
    under_load = {}
    for case in dict.fromkeys(p["case"] for p in points if p["concurrency"] == CONCURRENCY[-1] and p["requests"]):
        rows = [p for p in points if p["case"] == case and p["concurrency"] == CONCURRENCY[-1]]
        per = {}
        for p in rows:
            for name, cores in p["cpu_cores"].items():
                if name not in ("machine_busy", "other_processes"):
                    per.setdefault(name, []).append(cores / p["throughput_rps"] * 1e6)
            per.setdefault("client", []).append(p["client_cpu_cores"] / p["throughput_rps"] * 1e6)
        under_load[case] = {name: round(statistics.median(v), 1) for name, v in per.items()}
        under_load[case]["total"] = round(sum(under_load[case].values()), 1)
    result["cpu_us_per_request_at_top_concurrency"] = under_load
    return result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in results["points"] if not p.get("h2h") and p["case"] != "naive_nodelay_off"]
    cases = list(dict.fromkeys(p["case"] for p in points))
    fig, (ax_thr, ax_p99, ax_h2h) = plt.subplots(1, 3, figsize=(18, 5.8), gridspec_kw={"width_ratios": [3, 3, 2]})
    for case in cases:
        rows = sorted((p for p in points if p["case"] == case), key=lambda p: p["concurrency"])
        style = {"naive": dict(color="black", lw=2.5, marker="s"), "ping": dict(color="grey", lw=2, ls=":", marker="^"),
                 "shipped": dict(color="tab:red", lw=2.5, marker="D")}.get(case, dict(marker="o", lw=1.3))
        if rows[0].get("sweep"):
            style = dict(marker="x", lw=1, ls="--")
        xs = [p["concurrency"] for p in rows]
        ax_thr.plot(xs, [p["throughput_rps"] for p in rows], label=case, **style)
        if case != "ping":
            ax_p99.plot(xs, [p["latency_ms"]["p99"] for p in rows], label=case, **style)
    for ax, title, unit in ((ax_thr, "Throughput", "requests/s"), (ax_p99, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_thr.legend(fontsize=7, ncol=2)
    h2h = results.get("head_to_head", {})
    if h2h:
        names = list(h2h)
        medians = [h2h[n]["throughput_rps"] for n in names]
        lows = [m - h2h[n]["throughput_range"][0] for n, m in zip(names, medians)]
        highs = [h2h[n]["throughput_range"][1] - m for n, m in zip(names, medians)]
        bars = ax_h2h.bar(names, medians, yerr=[lows, highs], capsize=4, color=["black", "tab:blue", "grey", "tab:cyan"][: len(names)])
        for bar, n in zip(bars, names):
            p99 = h2h[n]["p99_ms"]
            ax_h2h.annotate(f"{bar.get_height():.0f}/s\np99 {p99:.0f} ms" if p99 else "", (bar.get_x() + bar.get_width() / 2, 0),
                            ha="center", va="bottom", fontsize=8, color="white", xytext=(0, 4), textcoords="offset points")
        ax_h2h.set_title(f"Head-to-head at {CONCURRENCY[-1]} clients (median, min-max of {h2h[names[0]]['rounds']} rounds)", fontsize=9)
        ax_h2h.set_ylabel("requests/s")
        ax_h2h.tick_params(axis="x", labelsize=8, rotation=15)
    fig.suptitle("sentiment on 2 shared CPU cores: naive FastAPI vs TorchServe "
                 "(wXbY = X workers, batch size Y, 5 ms max batch delay; dZ = Z ms delay)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_markdown(results: dict) -> str:
    points, top = results["points"], CONCURRENCY[-1]
    cs = list(CONCURRENCY)
    main_points = [p for p in points if not p.get("h2h")]
    lines = ["| case | config | " + " | ".join(f"req/s c={c}" for c in cs) + " | " + " | ".join(f"p99 ms c={c}" for c in cs)
             + f" | p50 ms c=1 | batch c={top} | errors | other CPU |",
             "|---|---|" + "---:|" * (2 * len(cs) + 4)]
    short = {"workers": "w", "batch_size": "b", "max_batch_delay_ms": "delay", "tcp_nodelay": "nodelay", "torch_threads": "threads"}
    p50_cell = lambda r: f"{r['latency_ms']['p50']:.1f}"  # noqa: E731
    batch_cell = lambda r: str(r.get("avg_batch_size") or "")  # noqa: E731
    for case in dict.fromkeys(p["case"] for p in main_points):
        rows = {p["concurrency"]: p for p in main_points if p["case"] == case}
        first = next(iter(rows.values()))
        config = " ".join(f"{short.get(k, k)}={v}" for k, v in first["config"].items())
        cell = lambda c, f: f(rows[c]) if c in rows else ""  # noqa: E731
        other = statistics.mean(r["cpu_cores"]["other_processes"] for r in rows.values())
        lines.append(f"| {case} | {config} | " + " | ".join(cell(c, lambda r: f"{r['throughput_rps']:.0f}") for c in cs)
                     + " | " + " | ".join(cell(c, lambda r: f"{r['latency_ms']['p99']:.1f}") for c in cs)
                     + f" | {cell(1, p50_cell)} | {cell(top, batch_cell)}"
                     + f" | {sum(r['errors'] for r in rows.values())} | {other:.2f} |")
    h2h = results.get("head_to_head", {})
    if h2h:
        lines += ["", f"Head-to-head at c={top}, interleaved, median of {next(iter(h2h.values()))['rounds']} rounds:", "",
                  "| case | config | req/s (min-max) | p50 ms | p99 ms | batch | client CPU | other CPU | errors |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, h in h2h.items():
            config = " ".join(f"{short.get(k, k)}={v}" for k, v in h["config"].items())
            lines.append(f"| {name} | {config} | {h['throughput_rps']:.0f} ({h['throughput_range'][0]:.0f}-{h['throughput_range'][1]:.0f}) | "
                         f"{h['p50_ms']:.1f} | {h['p99_ms'] if h['p99_ms'] is None else round(h['p99_ms'], 1)} | {h['avg_batch_size'] or ''} | "
                         f"{h['client_cpu_cores']:.2f} | {h['other_processes_cpu_cores']:.2f} | {h['errors']} |")
    ceilings = results["ceilings"]["batches"]
    lines += ["", "In-process ceilings (texts/s, one thread unless stated):", "",
              "| batch | encode (text.py) | TorchScript fwd | eager fwd | ONNX Runtime fwd | TorchScript fwd, 2 threads | encode + TorchScript |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for b, e in ceilings.items():
        cells = [f"{e[name]['texts_per_s']:.0f}" if name in e else "n/a" for name in ("encode", "torchscript", "eager", "onnxruntime", "torchscript_2_threads")]
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {e['torchscript']['encode_plus_forward_texts_per_s']:.0f} |")
    lines += ["", f"Parity with the archive's TorchScript core: {results['ceilings']['parity']}"]
    steps = results["ceilings"].get("encode_steps_us_per_text")
    if steps:
        lines += ["", "Encode, us per text of the mix: " + ", ".join(f"{k} {v}" for k, v in steps.items())]
    lines += ["", f"Targets at c={top}:", ""]
    for label, t in results["targets"].items():
        lines.append(f"- {label} ({t['source']}; {t['case']}): {t['throughput_rps']:.0f} req/s, p99 {t['p99_ms']:.1f} ms. "
                     + "; ".join(f"{name} {t[name]['ratio']}x ({'met' if t[name]['met'] else 'MISSED'}, target {t[name]['target']})"
                                 for name in ("throughput_vs_naive", "p99_vs_naive", "throughput_vs_ping"))
                     + f"; vs encode+forward ceiling {t['vs_encode_plus_forward_ceiling_b64']['ratio']}x, "
                     f"vs worker in-process ceiling {t['vs_worker_in_process_ceiling']['ratio']}x, "
                     f"vs forward-only ceiling {t['vs_forward_only_ceiling_b64']['ratio']}x")
    b = results["breakdown"]
    if "shares_of_client_latency" in b:
        lines += ["", f"One request (w1b1, c=1): client {b['client_latency_ms_mean']} ms mean, TorchServe frontend clock "
                  f"{b['frontend_latency_ms_mean']} ms, worker Python {b['worker_python_ms_in_process']} ms in-process. Shares: "
                  + "; ".join(f"{k} {v:.0%}" for k, v in b["shares_of_client_latency"].items())]
    cpu = b["cpu_us_per_request_at_top_concurrency"]
    lines += ["", f"CPU us per request at c={top}: " + "; ".join(
        f"{case} " + "/".join(f"{k} {v:.0f}" for k, v in parts.items()) for case, parts in cpu.items() if case in
        ("naive", "ping", "shipped") or case.startswith("h2h_"))]
    nd, nn = at(points, "naive_nodelay_off", 1), at(points, "naive", 1)
    if nd and nn:
        lines += ["", f"TCP_NODELAY check (naive, c=1): off: p50 {nd['latency_ms']['p50']} ms, {nd['throughput_rps']:.0f} req/s; "
                  f"on (asyncio's default, kept): p50 {nn['latency_ms']['p50']} ms, {nn['throughput_rps']:.0f} req/s"]
    rec = results["recommended_defaults"]
    lines += ["", "Recommended model-config.yaml: " + ", ".join(f"{k}: {v}" for k, v in rec["model_config_yaml"].items())]
    for name, v in rec["frontend_variants"].items():
        lines += [f"Frontend variant {name} ({', '.join(f'{k}={x}' for k, x in v['config'].items() if 'netty' in k or 'async' in k)}): "
                  f"{v['throughput_rps']:.0f} req/s vs {v['control_throughput_rps']:.0f} for a fresh JVM with config.properties "
                  f"({v['throughput_vs_control']}x, p99 {v['p99_ms']} vs {v['control_p99_ms']} ms): {v['verdict']}"]
    other = [p["cpu_cores"]["other_processes"] for p in points]
    lines += ["", f"Background CPU from other processes during the points: mean {statistics.mean(other):.2f}, max {max(other):.2f} "
              f"of {psutil.cpu_count()} cores; load average {results['machine']['load_average_at_start']} at start, "
              f"{results['machine'].get('load_average_at_end')} at end. Total run {results['run_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def frontend_verdicts(h2h: dict) -> dict:
    """Each frontend variant against the control started and warmed the same way (fresh_jvm)."""
    control = h2h.get("torchserve_fresh_jvm")
    out = {}
    for name, h in h2h.items():
        if name.startswith("torchserve_") and name != "torchserve_fresh_jvm" and control:
            ratio = h["throughput_rps"] / control["throughput_rps"]
            out[name.removeprefix("torchserve_")] = {
                "config": h["config"], "throughput_rps": h["throughput_rps"], "p99_ms": h["p99_ms"],
                "control_throughput_rps": control["throughput_rps"], "control_p99_ms": control["p99_ms"],
                "throughput_vs_control": round(ratio, 2),
                "verdict": "no worse (within 10 %)" if ratio >= 0.9 else "worse: keep the default"}
    return out


def recommended_defaults(results: dict) -> dict:
    """The configuration to ship, with the numbers behind it."""
    final = results["final_config"]
    return {
        "model_config_yaml": {"minWorkers": final["workers"], "maxWorkers": final["workers"], "batchSize": final["batch_size"],
                              "maxBatchDelay": final["max_batch_delay_ms"]},
        "workers_and_batch_rule": results["choice"]["rule"],
        "delay_rule": best_delay.__doc__.strip(),
        "delay_sweep": delay_sweep(results["points"], final),
        "frontend_variants": frontend_verdicts(results.get("head_to_head", {})),
    }


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds per point before measuring")
    parser.add_argument("--duration", type=float, default=DURATION_S, help="measured seconds per point")
    parser.add_argument("--max-requests", type=int, default=MAX_REQUESTS)
    parser.add_argument("--mar", type=Path, default=SHIPPED_MAR, help="archive to serve (copied to a private model store)")
    parser.add_argument("--skip-variants", action="store_true", help="no frontend variants (VARIANTS) in the head-to-head")
    parser.add_argument("--quick", action="store_true", help="0.5 s warm-up, 2 s points, no frontend variants: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.duration, args.skip_variants = 0.5, 2.0, True
    started = time.monotonic()
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(TMP, ignore_errors=True)
    store = TMP / "model_store"
    store.mkdir(parents=True)
    shutil.copyfile(args.mar, store / f"{MODEL}.mar")  # a concurrent `make archive` cannot change it mid-run

    model_dir = extract(store / f"{MODEL}.mar", TMP / "archive")  # the naive app and in-process parts run this snapshot
    signature = json.loads((model_dir / "signature.json").read_text())
    bodies, body_stats = request_bodies(signature["max_chars"])
    bodies_file = TMP / "bodies.json"
    bodies_file.write_text(json.dumps(bodies))
    results = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(), "versions": versions(),
        "config": {"concurrency": CONCURRENCY, "warmup_s": args.warmup, "duration_s": args.duration,
                   "max_requests_per_point": args.max_requests,
                   "grid": {"workers": GRID_WORKERS, "batch_size": GRID_BATCH, "max_batch_delay_ms": GRID_DELAY_MS},
                   "delay_sweep_ms": DELAY_SWEEP_MS, "head_to_head_rounds": H2H_ROUNDS,
                   "frontend_variants": {} if args.skip_variants else VARIANTS, "prewarm_requests": PREWARM_REQUESTS,
                   "archive": str(args.mar), "archive_sha256": hashlib.sha256(args.mar.read_bytes()).hexdigest(),
                   "model": {k: signature.get(k) for k in ("model_name", "version", "ngram", "features", "max_chars", "max_texts")},
                   "loadgen": "bench/loadgen.py: asyncio + aiohttp, closed loop, keep-alive, one process on the same 2 cores as the servers",
                   "torchserve": "LocalTorchServe with config.properties, private ports/TMPDIR/TEMP; re-registered per grid point",
                   "naive": "bench/naive_app.py: FastAPI + uvicorn (h11), one process, the archive's TorchScript core and code",
                   "bodies": body_stats},
    }
    log(f"{len(bodies)} request bodies: {body_stats['chars']} chars; load average {results['machine']['load_average_at_start']}")

    log("in-process ceilings and worker profile")
    inprocess = subprocess.run([PY, str(BENCH / "inprocess.py"), "--model-dir", str(model_dir), "--bodies", str(bodies_file),
                                "--onnx", str(EXPORT / "model.onnx"), "--checkpoint", str(BUILD),
                                "--batch-sizes", ",".join(str(b) for b in GRID_BATCH), "--seconds", "0.6" if args.quick else "1.0"],
                               capture_output=True, text=True)
    if inprocess.returncode != 0:
        raise RuntimeError(f"inprocess.py failed: {inprocess.stderr[-3000:]}")
    measured = json.loads(inprocess.stdout.strip().splitlines()[-1])
    results["ceilings"], results["worker_profile"] = measured["ceilings"], measured["worker_profile"]
    for b, e in results["ceilings"]["batches"].items():
        log(f"  batch {b}: encode {e['encode']['texts_per_s']:.0f} texts/s; forward " + ", ".join(
            f"{name} {e[name]['texts_per_s']:.0f}" for name in ("torchscript", "eager", "onnxruntime", "torchscript_2_threads") if name in e))
    log(f"  parity: {results['ceilings']['parity']}")

    bench = Bench(args, bodies_file)
    results["points"] = bench.points
    sample = bodies[:20]
    try:
        run_naive(bench, results, sample)
        run_torchserve(bench, results, store, sample)
    finally:
        results["run_seconds"] = round(time.monotonic() - started, 1)
        results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        (RESULTS / "results.json").write_text(json.dumps(results, indent=1) + "\n")  # whatever was measured, even on failure

    naive_p = [p["probability"] for p in results["naive_sample_predictions"]]
    ts_p = [p["probability"] for p in results["torchserve_sample_predictions"]]
    results["naive_vs_torchserve_max_abs_diff"] = max(abs(a - b) for a, b in zip(naive_p, ts_p))
    results["head_to_head"] = h2h_medians(bench.points)
    results["targets"] = targets(results)
    results["breakdown"] = breakdown(bench.points, results["worker_profile"])
    results["recommended_defaults"] = recommended_defaults(results)
    results["run_seconds"] = round(time.monotonic() - started, 1)
    plot(results, RESULTS / "throughput_latency.png")
    summary = summary_markdown(results)
    (RESULTS / "summary.md").write_text(summary)
    (RESULTS / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    shutil.rmtree(TMP, ignore_errors=True)
    print()
    print(summary)
    log(f"wrote {RESULTS / 'results.json'}, throughput_latency.png, summary.md in {results['run_seconds']:.0f} s")


if __name__ == "__main__":
    main()
