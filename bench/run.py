"""Serving benchmark: naive FastAPI baseline vs TorchServe (workers x batch size grid), with ceilings.

    .venv/bin/python bench/run.py            # `make bench`: 6-7 minutes on 2 busy cores
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
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil
import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.append(str(ROOT))  # after bench/, so bench's own modules win

import corpus  # noqa: E402  (bench/corpus.py)
from archive import extract  # noqa: E402  (bench/archive.py)
from provenance import Provenance  # noqa: E402
from local_server import AdminError, LocalTorchServe, free_port  # noqa: E402

PY = sys.executable
RESULTS = BENCH / "results"
TMP = Path(tempfile.mkdtemp(prefix="bench-"))  # scratch, removed at the end: request bodies, a private copy of the archive
MODEL = "sentiment"
BUILD = ROOT / "build" / "v1"
EXPORT = BUILD / "export"
SHIPPED_MAR = ROOT / "model_store" / f"{MODEL}.mar"

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
BUDGET_S = 540  # the optional parts (delay sweep, frontend variants) are skipped to finish within it
SWEEP_RESERVE_S, VARIANTS_RESERVE_S = 200, 150  # time left needed to start one more delay / the variants
PREWARM_REQUESTS = 100  # sent one by one after each (re-)registration, before any warm-up
WARMUP_S, DURATION_S = 1.0, 3.0
MAX_REQUESTS = 100_000  # per point, warm-up included: a bound far above what 5 s can reach here


# ---------------------------------------------------------------- inputs and environment

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
    return {
        "torch": torch.__version__, "torchserve": version("torchserve"), "torch_model_archiver": version("torch-model-archiver"),
        "onnxruntime": onnxruntime.__version__, "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
        "aiohttp": aiohttp.__version__, "java": java[0] if java else None,
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
    overrides = {"grpc_inference_port": str(free_port()), "grpc_management_port": str(free_port()),
                 # the grid re-registers the archive with other batching: this private server needs the
                 # model-control API whatever config.properties ships (allowed_urls still limits it to model_store)
                 "enable_model_api": "true", **(config or {})}
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
    try:
        ts.admin.unregister()
    except AdminError:  # not registered
        pass
    ts.admin.register(f"{MODEL}.mar", batch_size=batch_size, max_batch_delay=delay_ms, initial_workers=1)
    return scale(ts, workers)


def prewarm(ts: LocalTorchServe) -> None:
    """A few requests through every fresh worker (TorchScript's profiling runs, first-call imports)."""
    with requests.Session() as session:
        for i in range(PREWARM_REQUESTS):
            session.post(f"{ts.inference}/predictions/{MODEL}", json={"text": f"warm-up review number {i}, a fine film"}, timeout=10)


def scale(ts: LocalTorchServe, workers: int) -> dict:
    (description,) = ts.admin.scale(workers)
    prewarm(ts)
    return description


# ---------------------------------------------------------------- one load point

class Bench:
    def __init__(self, args, bodies_file: Path, started: float):
        self.args, self.bodies_file, self.started = args, bodies_file, started
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
        if result["throughput_rps"] > 0:
            server = sum(v for k, v in cores.items() if k not in ("machine_busy", "other_processes"))
            record["server_cpu_us_per_request"] = round(server / result["throughput_rps"] * 1e6, 1)
            record["client_cpu_us_per_request"] = round(result["client_cpu_cores"] / result["throughput_rps"] * 1e6, 1)
            if cores.get("workers"):
                record["worker_cpu_us_per_request"] = round(cores["workers"] / result["throughput_rps"] * 1e6, 1)
            record["capacity_rps"] = capacity(record)
        if ts is not None:
            record["torchserve"] = self.torchserve_side(ts, counters_before, counters_after, wall_start, wall_end)
            record["avg_batch_size"] = record["torchserve"].get("avg_batch_size")
        self.points.append(record)
        lat = result["latency_ms"]
        log(f"{case:>14} c={concurrency:<3} {result['throughput_rps']:>8.1f} req/s  p50 {lat['p50']} ms  p99 {lat['p99']} ms  "
            f"errors {result['errors']}  client cpu {result['client_cpu_cores']:.2f}  other cpu {cores['other_processes']:.2f}"
            + (f"  server cpu/req {record.get('server_cpu_us_per_request')} us" if "server_cpu_us_per_request" in record else "")
            + (f"  batch {record.get('avg_batch_size')}" if ts else ""))
        return record

    def time_left(self) -> float:
        return self.args.budget - (time.monotonic() - self.started)

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
    """The JVM, and its model workers."""
    return {"frontend": lambda: [ts.frontend] if ts.frontend else [], "workers": ts.workers}


def run_torchserve(bench: Bench, results: dict, store: Path, sample_bodies: list[str]) -> None:
    with torchserve(store) as ts:
        predict = f"{ts.inference}/predictions/{MODEL}"
        groups = ts_groups(ts)
        for c in CONCURRENCY:
            bench.point("ping", ts.inference + "/ping", c, {}, groups, post=False, ts=ts)
        (shipped,) = ts.admin.describe()
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
            if bench.time_left() < SWEEP_RESERVE_S:
                log(f"skipping max_batch_delay={delay} ms: {bench.time_left():.0f} s of the {bench.args.budget:.0f} s budget left")
                continue
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
            variants = {} if bench.args.skip_variants else VARIANTS
            if variants and bench.time_left() < VARIANTS_RESERVE_S:
                log(f"skipping the frontend variants: {bench.time_left():.0f} s of the {bench.args.budget:.0f} s budget left")
                variants = {}
            for name, overrides in variants.items():
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


def capacity(point: dict) -> int | None:
    """Requests/s this server would sustain with the host to itself (no client, no other processes),
    from the CPU it spent per request in this point: all of it must fit in the host's cores, and each
    single-threaded Python process (a TorchServe worker; the naive app's event loop) in one core:
    min(cores / server CPU per request, processes / CPU per request of those processes)."""
    server = point.get("server_cpu_us_per_request")
    if not server:
        return None
    limit = psutil.cpu_count() / server
    if point.get("worker_cpu_us_per_request"):
        limit = min(limit, point["config"].get("workers", 1) / point["worker_cpu_us_per_request"])
    elif "server" in point["cpu_cores"]:  # the naive app: one process, one event loop
        limit = min(limit, 1 / server)
    return round(limit * 1e6)


def choose(points: list[dict]) -> dict:
    """workers x batch size from the grid (max batch delay 5 ms for all), by capacity() at the top
    concurrency: the throughput the configuration would sustain with the host to itself, from the
    CPU it spent per request. Unlike the raw throughput of a point, that barely depends on how much
    CPU other processes happened to leave during it. recommended = the fewest workers, then the
    smallest batch, among the error-free configurations within 10 % of the highest capacity (the
    delay is chosen next, by the sweep). The highest raw throughput is reported beside it."""
    top = CONCURRENCY[-1]
    grid = list(dict.fromkeys(p["case"] for p in points if p.get("grid")))
    config_of = {p["case"]: p["config"] for p in points if p.get("grid")}
    cap = {case: at(points, case, top).get("capacity_rps") or 0 for case in grid}
    rps = {case: at(points, case, top)["throughput_rps"] for case in grid}
    clean = [case for case in grid if not any(p["errors"] for p in points if p["case"] == case)] or grid
    best = max(clean, key=cap.get)
    recommended = min((case for case in clean if cap[case] >= 0.9 * cap[best]),
                      key=lambda case: (config_of[case]["workers"], config_of[case]["batch_size"]))
    fastest = max(grid, key=rps.get)
    return {"recommended_case": recommended, "recommended": config_of[recommended], "highest_capacity_case": best,
            "fastest_case": fastest, f"capacity_rps_at_{top}": cap, f"throughput_at_{top}": rps,
            "rule": " ".join(choose.__doc__.split())}


def delay_sweep(points: list[dict], config: dict) -> dict:
    """{max_batch_delay_ms: {concurrency: numbers}} for this workers x batch size (grid and sweep points)."""
    swept = {}
    for p in points:
        if (p.get("grid") or p.get("sweep")) and p["config"].get("workers") == config["workers"] \
                and p["config"].get("batch_size") == config["batch_size"]:
            swept.setdefault(p["config"]["max_batch_delay_ms"], {})[p["concurrency"]] = {
                "rps": p["throughput_rps"], "p50": p["latency_ms"]["p50"], "p99": p["latency_ms"]["p99"],
                "avg_batch": p.get("avg_batch_size"), "server_cpu_us_per_request": p.get("server_cpu_us_per_request")}
    return dict(sorted(swept.items()))


def best_delay(swept: dict) -> int:
    """maxBatchDelay: the smallest delay (the least latency added when a batch does not fill, as at
    one client) whose server CPU per request at the top concurrency is within 15 % of the lowest
    (about the point-to-point noise of that figure on this shared machine)."""
    if len(swept) < 2:
        return next(iter(swept), GRID_DELAY_MS)
    top = CONCURRENCY[-1]
    cost = {d: rows[top]["server_cpu_us_per_request"] or float("inf") for d, rows in swept.items() if top in rows}
    return min(d for d, c in cost.items() if c <= 1.15 * min(cost.values()))


def h2h_medians(points: list[dict]) -> dict:
    """Per head-to-head case: the median (and range) over the interleaved rounds."""
    out = {}
    for case in dict.fromkeys(p["case"] for p in points if p.get("h2h")):
        rows = [p for p in points if p["case"] == case]
        rps = [p["throughput_rps"] for p in rows]
        p99 = [p["latency_ms"]["p99"] for p in rows if p["latency_ms"]["p99"] is not None]
        median = lambda key: round(statistics.median(p.get(key) or 0 for p in rows), 2)  # noqa: E731
        out[case.removeprefix("h2h_")] = {
            "config": rows[0]["config"], "rounds": len(rows),
            "throughput_rps": round(statistics.median(rps), 1), "throughput_range": [min(rps), max(rps)],
            "p50_ms": round(statistics.median(p["latency_ms"]["p50"] for p in rows), 3),
            "p99_ms": round(statistics.median(p99), 3) if p99 else None, "p99_range": [min(p99), max(p99)] if p99 else None,
            "errors": sum(p["errors"] for p in rows),
            "server_cpu_us_per_request": median("server_cpu_us_per_request"),
            "worker_cpu_us_per_request": median("worker_cpu_us_per_request") or None,
            "capacity_rps": median("capacity_rps"),
            "client_cpu_us_per_request": median("client_cpu_us_per_request"),
            "client_cpu_cores": round(statistics.median(p["client_cpu_cores"] for p in rows), 3),
            "other_processes_cpu_cores": round(statistics.median(p["cpu_cores"]["other_processes"] for p in rows), 3),
            "avg_batch_size": median("avg_batch_size") or None,
        }
    return out


def ratio_check(value: float, target: float, higher_is_better: bool) -> dict:
    met = value >= target if higher_is_better else value <= target
    return {"ratio": round(value, 3), "target": f"{'>=' if higher_is_better else '<='} {target}", "met": met,
            "margin": f"{(value / target - 1) * 100:+.0f} % vs target"}


def targets(results: dict) -> dict:
    """The targets at the top concurrency, from the interleaved head-to-head medians (TorchServe in
    the final configuration vs naive vs /ping), and for reference from the single grid pass (the
    final configuration's grid point against the naive and /ping points measured minutes earlier).
    Also the CPU time per request behind each, which is what decides the ratios on a CPU-bound host."""
    points, ceilings, profile = results["points"], results["ceilings"], results["worker_profile"]
    top = CONCURRENCY[-1]
    forward64 = ceilings["batches"]["64"]["torchscript"]["texts_per_cpu_s"]
    serve64 = ceilings["batches"]["64"]["torchscript"]["encode_plus_forward_texts_per_cpu_s"]
    cores = psutil.cpu_count()

    def block(ts: dict, naive: dict, ping: dict, batch_size: int) -> dict:
        worker = profile["batch_sizes"].get(str(batch_size))
        return {
            "throughput_rps": ts["throughput_rps"], "p99_ms": ts["p99_ms"],
            "naive_throughput_rps": naive["throughput_rps"], "naive_p99_ms": naive["p99_ms"], "ping_rps": ping["throughput_rps"],
            "throughput_vs_naive": ratio_check(ts["throughput_rps"] / naive["throughput_rps"], 1.0, True),
            "p99_vs_naive": ratio_check(ts["p99_ms"] / naive["p99_ms"], 1.5, False),
            "throughput_vs_ping": ratio_check(ts["throughput_rps"] / ping["throughput_rps"], 0.5, True),
            "cpu_us_per_request": {"torchserve": {"server": ts["server_cpu_us_per_request"], "client": ts["client_cpu_us_per_request"]},
                                   "naive": {"server": naive["server_cpu_us_per_request"], "client": naive["client_cpu_us_per_request"]},
                                   "ping": {"server": ping["server_cpu_us_per_request"], "client": ping["client_cpu_us_per_request"]}},
            "capacity_with_host_to_itself": {
                "note": " ".join(capacity.__doc__.split()),
                "torchserve_rps": ts["capacity_rps"], "naive_rps": naive["capacity_rps"], "ping_rps": ping["capacity_rps"],
                "torchserve_vs_naive": round(ts["capacity_rps"] / naive["capacity_rps"], 2),
                "torchserve_vs_ping": round(ts["capacity_rps"] / ping["capacity_rps"], 3)},
            "vs_forward_only_ceiling_b64": {"ratio": round(ts["throughput_rps"] / forward64, 4), "ceiling_texts_per_cpu_s": forward64,
                                            "note": "TorchScript forward alone, one thread, batches of 64 pre-encoded texts"},
            "vs_encode_plus_forward_ceiling_b64": {"ratio": round(ts["throughput_rps"] / serve64, 3), "ceiling_texts_per_cpu_s": serve64,
                                                   "note": "the archive's encode + forward per CPU-second of one core; the host has "
                                                           f"{cores}, shared with the frontend, the client and other processes"},
            "vs_worker_in_process_ceiling": {
                "ratio": round(ts["throughput_rps"] / worker["worker_ceiling_rps_per_core"], 3) if worker else None,
                "ceiling_rps_per_core": worker["worker_ceiling_rps_per_core"] if worker else None,
                "note": f"one worker's whole Python path (JSON, handler, response) at batch {batch_size}, in-process, per CPU-second"},
        }

    out = {}
    h2h = results.get("head_to_head", {})
    if {"naive", "torchserve", "ping"} <= h2h.keys():
        t = h2h["torchserve"]
        out["head_to_head"] = {"case": "final configuration " + json.dumps(t["config"]), "concurrency": top,
                               "source": f"medians of {t['rounds']} interleaved rounds",
                               **block(t, h2h["naive"], h2h["ping"], t["config"]["batch_size"])}
    final = results["final_config"]
    case = next((p["case"] for p in points if (p.get("grid") or p.get("sweep")) and p["config"] == final), None)
    if case:
        one = lambda p: {**p, "p99_ms": p["latency_ms"]["p99"]}  # noqa: E731
        out["grid_pass"] = {"case": case, "concurrency": top, "source": "single pass, points measured minutes apart",
                            **block(one(at(points, case, top)), one(at(points, "naive", top)), one(at(points, "ping", top)), final["batch_size"])}
    return out


def breakdown(points: list[dict], profile: dict) -> dict:
    """Where the time of one request goes (w1b1, one client, one request in flight): the client's
    latency, TorchServe's own clock (ts_inference_latency_microseconds: from the request's arrival in
    the frontend to its response), and the worker's Python path measured in-process in CPU time, by
    step. Beside it, the CPU each process spent per request, at one client and at the top concurrency
    (the JVM also works off the request path: it parses and writes every log and metric line the
    worker prints, collects garbage, polls), so those are costs, not shares of the latency."""
    point = at(points, "w1b1", 1)
    n = point["throughput_rps"]
    client_ms = point["latency_ms"]["mean"]
    frontend_ms = point["torchserve"].get("frontend_latency_ms_mean")
    steps_us = profile["batch_sizes"]["1"]["per_request_us"]
    worker_ms = profile["batch_sizes"]["1"]["worker_total_per_request_us"] / 1e3
    step_names = {"decode": "JSON decode + framing", "preprocess": "handler preprocess (validation)", "encode": "tokenise + encode",
                  "forward": "forward", "inference_other": "rest of inference (tensors, sigmoid, tolist)",
                  "postprocess": "postprocess + prediction metrics", "response": "response JSON + framing",
                  "predict_other": "TorchServe service + handler metrics"}
    result = {
        "point": "w1b1 at concurrency 1 (one request in flight)",
        "client_latency_ms_mean": client_ms, "client_latency_ms_p50": point["latency_ms"]["p50"],
        "frontend_clock_ms_mean": frontend_ms, "frontend_queue_ms_mean": point["torchserve"].get("frontend_queue_ms_mean"),
        "worker_python_cpu_ms": round(worker_ms, 3),
        "worker_steps_cpu_ms": {step_names.get(k, k): round(v / 1e3, 4) for k, v in steps_us.items() if k not in ("predict", "inference")},
        "cpu_ms_per_request_at_1_client": {**{name: round(cores / n * 1e3, 3) for name, cores in point["cpu_cores"].items()
                                             if name not in ("machine_busy", "other_processes")},
                                          "client": round(point["client_cpu_cores"] / n * 1e3, 3)},
    }
    if frontend_ms:
        inside = max(0.0, frontend_ms - worker_ms)
        result["shares_of_client_latency"] = {
            "outside TorchServe's clock: client, HTTP on loopback, Netty read/write": round((client_ms - frontend_ms) / client_ms, 3),
            "inside it, besides the worker's Python: queue, batching, Unix-socket IPC, wake-ups": round(inside / client_ms, 3),
            "worker Python (JSON, handler, response)": round(min(worker_ms, frontend_ms) / client_ms, 3),
            **{f"  of which {step_names.get(k, k)}": round(v / 1e3 / client_ms, 3) for k, v in steps_us.items()
               if k in ("decode", "encode", "forward", "postprocess", "response")},
        }
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
        colors = ["black", "tab:blue", "grey", "tab:cyan", "tab:purple", "tab:olive"]
        bars = ax_h2h.bar(names, medians, yerr=[lows, highs], capsize=4, color=[colors[i % len(colors)] for i in range(len(names))])
        for bar, n, high in zip(bars, names, highs):
            p99 = h2h[n]["p99_ms"]
            ax_h2h.annotate(f"{bar.get_height():.0f}/s\np99 {p99:.0f} ms" if p99 else "", (bar.get_x() + bar.get_width() / 2, bar.get_height() + high),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax_h2h.set_yscale("log")
        ax_h2h.set_ylim(top=max(medians) * 4)
        ax_h2h.set_title(f"Head-to-head at {CONCURRENCY[-1]} clients (median, min-max of {h2h[names[0]]['rounds']} rounds)", fontsize=9)
        ax_h2h.set_ylabel("requests/s (log)")
        ax_h2h.tick_params(axis="x", labelsize=8, rotation=15)
    fig.suptitle("sentiment on 2 shared CPU cores: naive FastAPI vs TorchServe "
                 "(wXbY = X workers, batch size Y, 5 ms max batch delay; dZ = Z ms delay)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_markdown(results: dict) -> str:
    points, top = results["points"], CONCURRENCY[-1]
    cs = list(CONCURRENCY)
    short = {"workers": "w", "batch_size": "b", "max_batch_delay_ms": "delay", "tcp_nodelay": "nodelay", "torch_threads": "threads",
             "number_of_netty_threads": "netty", "netty_client_threads": "netty_client"}
    describe = lambda config: " ".join(f"{short.get(k, k)}={v}" for k, v in config.items())  # noqa: E731
    num = lambda v, fmt=".0f": "" if v is None else format(v, fmt)  # noqa: E731
    main_points = [p for p in points if not p.get("h2h")]
    lines = [f"Single pass, {results['config']['warmup_s']} s warm-up + {results['config']['duration_s']} s per point. "
             "other CPU = cores used by other processes during the point; capacity = the req/s the server would sustain "
             "with the host to itself, from its CPU per request (see results.json):", "",
             "| case | config | " + " | ".join(f"req/s c={c}" for c in cs) + " | " + " | ".join(f"p99 ms c={c}" for c in cs)
             + f" | p50 ms c=1 | server CPU us/req c={top} | capacity req/s c={top} | batch c={top} | errors | other CPU |",
             "|---|---|" + "---:|" * (2 * len(cs) + 6)]
    for case in dict.fromkeys(p["case"] for p in main_points):
        rows = {p["concurrency"]: p for p in main_points if p["case"] == case}
        get = lambda c, f: f(rows[c]) if c in rows else ""  # noqa: E731
        other = statistics.mean(r["cpu_cores"]["other_processes"] for r in rows.values())
        lines.append(f"| {case} | {describe(next(iter(rows.values()))['config'])} | "
                     + " | ".join(get(c, lambda r: f"{r['throughput_rps']:.0f}") for c in cs) + " | "
                     + " | ".join(get(c, lambda r: num(r["latency_ms"]["p99"], ".1f")) for c in cs)
                     + f" | {get(1, lambda r: num(r['latency_ms']['p50'], '.1f'))} | {get(top, lambda r: num(r.get('server_cpu_us_per_request')))}"
                     + f" | {get(top, lambda r: num(r.get('capacity_rps')))}"
                     + f" | {get(top, lambda r: num(r.get('avg_batch_size'), '.1f'))} | {sum(r['errors'] for r in rows.values())} | {other:.2f} |")
    h2h = results.get("head_to_head", {})
    if h2h:
        lines += ["", f"Head-to-head at c={top}: the cases in turn, {next(iter(h2h.values()))['rounds']} rounds, medians:", "",
                  "| case | config | req/s (min-max) | p50 ms | p99 ms | server CPU us/req | client CPU us/req | capacity req/s | batch | other CPU | errors |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, h in h2h.items():
            lines.append(f"| {name} | {describe(h['config'])} | {h['throughput_rps']:.0f} ({h['throughput_range'][0]:.0f}-{h['throughput_range'][1]:.0f}) | "
                         f"{h['p50_ms']:.1f} | {num(h['p99_ms'], '.1f')} | {num(h['server_cpu_us_per_request'])} | "
                         f"{num(h['client_cpu_us_per_request'])} | {num(h['capacity_rps'])} | {num(h['avg_batch_size'], '.1f')} | {h['other_processes_cpu_cores']:.2f} | {h['errors']} |")
    lines += ["", f"Targets at c={top}:", ""]
    for label, t in results["targets"].items():
        proj = t["capacity_with_host_to_itself"]
        lines.append(f"- {label} ({t['source']}; {t['case']}): TorchServe {t['throughput_rps']:.0f} req/s, p99 {num(t['p99_ms'], '.1f')} ms; "
                     f"naive {t['naive_throughput_rps']:.0f} req/s, p99 {num(t['naive_p99_ms'], '.1f')} ms; /ping {t['ping_rps']:.0f} req/s. "
                     + "; ".join(f"{name.replace('_', ' ')} {t[name]['ratio']}x ({'met' if t[name]['met'] else 'MISSED'}: target {t[name]['target']}, {t[name]['margin']})"
                                 for name in ("throughput_vs_naive", "p99_vs_naive", "throughput_vs_ping"))
                     + f". CPU per request (server+client, us): TorchServe {sum(t['cpu_us_per_request']['torchserve'].values()):.0f}, "
                     f"naive {sum(t['cpu_us_per_request']['naive'].values()):.0f}, /ping {sum(t['cpu_us_per_request']['ping'].values()):.0f}; "
                     f"capacity with the {psutil.cpu_count()}-core host to itself: TorchServe {proj['torchserve_rps']}, naive {proj['naive_rps']}, "
                     f"/ping {proj['ping_rps']} req/s (vs naive {proj['torchserve_vs_naive']}x, vs /ping {proj['torchserve_vs_ping']}x). "
                     f"Gap to ceilings: {t['vs_encode_plus_forward_ceiling_b64']['ratio']}x of encode+forward per core, "
                     f"{t['vs_worker_in_process_ceiling']['ratio']}x of the worker's in-process path per core, "
                     f"{t['vs_forward_only_ceiling_b64']['ratio']}x of the forward pass alone")
    ceilings = results["ceilings"]["batches"]
    lines += ["", "In-process ceilings, the archive's code, texts per CPU-second (one thread unless stated):", "",
              "| batch | encode (text.py) | TorchScript fwd | eager fwd | ONNX Runtime fwd | TorchScript fwd, 2 threads | encode + TorchScript |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for b, e in ceilings.items():
        cells = [num(e[name]["texts_per_cpu_s"]) if name in e else "n/a" for name in ("encode", "torchscript", "eager", "onnxruntime")]
        two = e.get("torchscript_2_threads")
        cells.append(f"{num(two['texts_per_cpu_s'])} ({num(two['texts_per_wall_s'])}/s wall)" if two else "n/a")
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {num(e['torchscript']['encode_plus_forward_texts_per_cpu_s'])} |")
    lines += ["", f"Parity with the archive's TorchScript core: {results['ceilings']['parity']}"]
    steps = results["ceilings"].get("encode_steps_us_per_text")
    if steps:
        lines += ["", "Encode, CPU us per text of the mix: " + ", ".join(f"{k} {v}" for k, v in steps.items())]
    b = results["breakdown"]
    lines += ["", f"One request (w1b1, c=1): client latency {b['client_latency_ms_mean']} ms mean, TorchServe's own clock "
              f"{b['frontend_clock_ms_mean']} ms, the worker's Python path {b['worker_python_cpu_ms']} ms CPU (in-process). Shares of the "
              "client's latency: " + "; ".join(f"{k.strip()} {v:.0%}" for k, v in b.get("shares_of_client_latency", {}).items()),
              "", "CPU ms per request at c=1 (costs, not latency shares; the JVM also handles the worker's log lines): "
              + ", ".join(f"{k} {v}" for k, v in b["cpu_ms_per_request_at_1_client"].items())]
    cpu = b["cpu_us_per_request_at_top_concurrency"]
    lines += ["", f"CPU us per request at c={top} (median over points): " + "; ".join(
        f"{case} " + "/".join(f"{k} {v:.0f}" for k, v in parts.items()) for case, parts in cpu.items())]
    nd, nn = at(points, "naive_nodelay_off", 1), at(points, "naive", 1)
    if nd and nn:
        lines += ["", f"TCP_NODELAY check (naive, c=1): off: p50 {nd['latency_ms']['p50']} ms, {nd['throughput_rps']:.0f} req/s; "
                  f"on (asyncio's default, kept): p50 {nn['latency_ms']['p50']} ms, {nn['throughput_rps']:.0f} req/s"]
    rec = results["recommended_defaults"]
    lines += ["", "Recommended model-config.yaml: " + ", ".join(f"{k}: {v}" for k, v in rec["model_config_yaml"].items())
              + f" (grid choice {results['choice']['recommended_case']}; highest capacity {results['choice']['highest_capacity_case']}, "
              f"highest req/s {results['choice']['fastest_case']})"]
    for name, v in rec["frontend_variants"].items():
        lines += [f"Frontend variant {name} ({describe({k: x for k, x in v['config'].items() if 'netty' in k})}): "
                  f"{v['throughput_rps']:.0f} req/s, server CPU {num(v['server_cpu_us_per_request'])} us/req vs {v['control_throughput_rps']:.0f} req/s, "
                  f"{num(v['control_server_cpu_us_per_request'])} us/req for a fresh JVM with config.properties: {v['verdict']}"]
    other = [p["cpu_cores"]["other_processes"] for p in points]
    lines += ["", f"Background CPU from other processes during the points: mean {statistics.mean(other):.2f}, max {max(other):.2f} "
              f"of {psutil.cpu_count()} cores; load average {results['machine']['load_average_at_start']} at start, "
              f"{results['machine'].get('load_average_at_end')} at end. Total run {results['run_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def frontend_verdicts(h2h: dict) -> dict:
    """Each frontend variant against the control started and warmed the same way (fresh_jvm),
    judged on server CPU per request (throughput follows it on a saturated host)."""
    control = h2h.get("torchserve_fresh_jvm")
    out = {}
    for name, h in h2h.items():
        if name.startswith("torchserve_") and name != "torchserve_fresh_jvm" and control:
            cost = h["server_cpu_us_per_request"] / control["server_cpu_us_per_request"]
            out[name.removeprefix("torchserve_")] = {
                "config": h["config"], "throughput_rps": h["throughput_rps"], "p99_ms": h["p99_ms"],
                "server_cpu_us_per_request": h["server_cpu_us_per_request"],
                "control_throughput_rps": control["throughput_rps"], "control_p99_ms": control["p99_ms"],
                "control_server_cpu_us_per_request": control["server_cpu_us_per_request"],
                "throughput_vs_control": round(h["throughput_rps"] / control["throughput_rps"], 2),
                "cpu_per_request_vs_control": round(cost, 2),
                "verdict": "no worse (CPU per request within 10 %)" if cost <= 1.1 else "worse: keep the default"}
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
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds; optional parts are skipped to stay within it")
    parser.add_argument("--skip-variants", action="store_true", help="no frontend variants (VARIANTS) in the head-to-head")
    parser.add_argument("--quick", action="store_true", help="0.5 s warm-up, 2 s points, no frontend variants: a smoke test")
    parser.add_argument("--allow-dirty", action="store_true", help="run from a dirty tree; results go to bench/results/tmp/")
    args = parser.parse_args()
    run = Provenance(args.allow_dirty)  # refuses a dirty tree now, not after the run
    if args.quick:
        args.warmup, args.duration, args.skip_variants = 0.5, 2.0, True
    started = time.monotonic()
    store = TMP / "model_store"
    store.mkdir(parents=True)
    shutil.copyfile(args.mar, store / f"{MODEL}.mar")  # a concurrent `make archive` cannot change it mid-run

    model_dir = extract(store / f"{MODEL}.mar", TMP / "archive")  # the naive app and in-process parts run this snapshot
    signature = json.loads((model_dir / "signature.json").read_text())
    texts, body_stats = corpus.mix(signature["max_chars"])
    bodies = corpus.json_bodies(texts)
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
        log(f"  batch {b}: encode {e['encode']['texts_per_cpu_s']:.0f} texts per CPU-s; forward " + ", ".join(
            f"{name} {e[name]['texts_per_cpu_s']:.0f}" for name in ("torchscript", "eager", "onnxruntime", "torchscript_2_threads") if name in e))
    log(f"  parity: {results['ceilings']['parity']}")

    bench = Bench(args, bodies_file, started)
    results["points"] = bench.points
    sample = bodies[:20]
    try:
        run_naive(bench, results, sample)
        run_torchserve(bench, results, store, sample)
    finally:
        results["run_seconds"] = round(time.monotonic() - started, 1)
        results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        results["provenance"] = run.record()
        out = run.target(RESULTS / "results.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")  # whatever was measured, even on failure
        shutil.rmtree(TMP, ignore_errors=True)

    naive_p = [p["probability"] for p in results["naive_sample_predictions"]]
    ts_p = [p["probability"] for p in results["torchserve_sample_predictions"]]
    results["naive_vs_torchserve_max_abs_diff"] = max(abs(a - b) for a, b in zip(naive_p, ts_p))
    results["head_to_head"] = h2h_medians(bench.points)
    results["targets"] = targets(results)
    results["breakdown"] = breakdown(bench.points, results["worker_profile"])
    results["recommended_defaults"] = recommended_defaults(results)
    results["run_seconds"] = round(time.monotonic() - started, 1)
    results["provenance"] = run.record()
    out = run.target(RESULTS / "results.json")
    plot(results, out.with_name("throughput_latency.png"))
    summary = summary_markdown(results)
    out.with_name("summary.md").write_text(summary)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print()
    print(summary)
    log(f"wrote {out}, throughput_latency.png, summary.md in {results['run_seconds']:.0f} s")


if __name__ == "__main__":
    main()
