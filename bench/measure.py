"""One measured load point: the load generator (bench/loadgen.py) in its own process against one
server, the CPU time of the server's processes, of the client and of the rest of the machine in the
same window, and for TorchServe its own counters (frontend latency, queue time, batch sizes).

    bench = Bench(args, bodies_file, scratch, started)
    bench.point("w2b8", url, concurrency, config, {"frontend": ..., "workers": ...}, ts=ts)
"""

import datetime
import json
import re
import subprocess
import time
from pathlib import Path

import psutil
import requests

from common import BENCH, PY, log
from sentiment.ops.torchserve import LocalTorchServe


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



# ---------------------------------------------------------------- TorchServe's own figures

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



# ---------------------------------------------------------------- one load point

class Bench:
    """The points measured so far, and how to measure one more. `args` holds warmup, duration,
    max_requests and budget (seconds for the whole run, from `started`); `bodies` the request-body
    files by kind (JSON lists of strings); `scratch` a folder for logs."""

    def __init__(self, args, bodies: dict[str, Path], scratch: Path, started: float):
        self.args, self.bodies, self.scratch, self.started = args, bodies, scratch, started
        self.points: list[dict] = []
        self.log_offsets: dict[str, int] = {}

    def point(self, case: str, url: str, concurrency: int, config: dict, groups: dict, body: str | None = "mix",
              ts: LocalTorchServe | None = None, **extra) -> dict:
        """Load `url` with `concurrency` clients POSTing the bodies of kind `body` (None: GET); the
        figures of the window, with the CPU time and memory of `groups` (name -> processes)."""
        cmd = [PY, str(BENCH / "loadgen.py"), "--url", url, "--concurrency", str(concurrency),
               "--warmup", str(self.args.warmup), "--duration", str(self.args.duration),
               "--max-requests", str(self.args.max_requests), "--offset", str(len(self.points) * 97)]
        if body:
            cmd += ["--bodies", str(self.bodies[body])]
        watch = CpuWatch(groups)
        stderr_file = self.scratch / "loadgen.err"
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
            memory = memory_mb(watch.resolved)
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
        record = {"case": case, "body": body, "config": config, **result, "cpu_cores": cores, "memory": memory, **extra}
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
            + f"  rss {memory['rss_mb']:.0f} MB"
            + (f"  batch {record.get('avg_batch_size')}" if ts else ""))
        return record

    def time_left(self) -> float:
        return self.args.budget - (time.monotonic() - self.started)

    def burst(self, url: str, concurrency: int, seconds: float, body: str | None = "mix") -> None:
        """Unrecorded load, to warm a fresh server up."""
        cmd = [PY, str(BENCH / "loadgen.py"), "--url", url, "--concurrency", str(concurrency), "--warmup", "0",
               "--duration", str(seconds), "--max-requests", str(self.args.max_requests)]
        subprocess.run(cmd + (["--bodies", str(self.bodies[body])] if body else []), capture_output=True, timeout=seconds + 60)

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


def capacity(point: dict) -> int | None:
    """Requests/s this server would sustain with the host to itself (no client, no other processes),
    from the CPU it spent per request in this point: all of it must fit in the host's cores, and each
    single-threaded Python process that does a request's work (a TorchServe worker; a uvicorn worker's
    event loop) in one core: min(cores / server CPU per request, processes / their CPU per request)."""
    server = point.get("server_cpu_us_per_request")
    if not server:
        return None
    limit = psutil.cpu_count() / server
    if point.get("worker_cpu_us_per_request"):
        limit = min(limit, point["config"].get("workers", 1) / point["worker_cpu_us_per_request"])
    elif point["config"].get("event_loops"):  # FastAPI: each uvicorn worker answers whole requests
        limit = min(limit, point["config"]["event_loops"] / server)
    return round(limit * 1e6)


def memory_mb(groups: dict) -> dict:
    """Resident memory of each process of each group (name -> processes), summed: RSS as the kernel
    counts it per process (shared pages in each), and PSS (shared pages split between their users)."""
    processes, rss, pss = [], 0.0, 0.0
    for group, procs in groups.items():
        for proc in procs:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            processes.append({"group": group, "pid": proc.pid, "rss_mb": round(info.rss / 2**20, 1)})
            rss, pss = rss + info.rss, pss + getattr(info, "pss", 0)
    return {"rss_mb": round(rss / 2**20, 1), "pss_mb": round(pss / 2**20, 1), "processes": processes}

