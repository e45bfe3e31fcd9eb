"""The servers under test and their lifecycles: each starts on free loopback ports, is waited for
until every one of its workers can answer, and is stopped with its whole process tree (by pid)
before the benchmark moves on.

    torchserve(store, model_api)        a private TorchServe (LocalTorchServe) on a copy of the archive
    fastapi(artifact, workers, ...)     bench/fastapi_app.py under `uvicorn --workers N`
    litserve(artifact, workers, ...)    bench/litserve_app.py

A `Server` names what the load goes to and the processes whose CPU time and memory count as the
server's (`groups`: name -> a function listing them; TorchServe: the JVM and its workers).
"""

import os
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil
import requests

from common import BENCH, MODEL, PY, log
from sentiment.ops.torchserve import AdminError, LocalTorchServe, free_port
from measure import tree

PREWARM_REQUESTS = 100  # sent one by one after each (re-)registration, before any warm-up
START_TIMEOUT_S = 240  # a loaded 2-core machine takes a while to import torch in several processes


@dataclass
class Server:
    name: str
    url: str  # base URL
    groups: dict  # name -> callable returning the processes (CPU and memory accounting)
    config: dict = field(default_factory=dict)
    ts: LocalTorchServe | None = None  # for TorchServe's own counters

    def processes(self) -> list[psutil.Process]:
        return [p for get in self.groups.values() for p in get()]


# ---------------------------------------------------------------- TorchServe

@contextmanager
def torchserve(store: Path, model_api: bool = False):
    """A private TorchServe (LocalTorchServe: free ports, its own TMPDIR and TEMP) serving the store's
    archive with config.properties; model_api: the model-control API on, for re-registering (the
    grid; allowed_urls still limits it to the private store)."""
    ts = LocalTorchServe(store, models=f"{MODEL}.mar", config={"enable_model_api": "true"} if model_api else None)
    try:
        started = time.monotonic()
        ts.start()
        log(f"TorchServe up in {time.monotonic() - started:.1f} s ({ts.inference})")
        yield ts
    finally:
        if ts.home.exists():  # LocalTorchServe.start() already stopped it if it never became healthy
            ts.stop()


def ts_groups(ts: LocalTorchServe) -> dict:
    """The JVM, and its model workers."""
    return {"frontend": lambda: [ts.frontend] if ts.frontend else [], "workers": ts.workers}


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


# ---------------------------------------------------------------- the peers: a process tree each

@contextmanager
def process_server(name: str, cmd: list[str], url: str, ready: Callable[[], bool], scratch: Path, config: dict,
                   env: dict | None = None):
    """Start `cmd`, wait until ready(), yield the Server; stop its whole tree however the block ends."""
    log_file = scratch / f"{name}.log"
    with log_file.open("w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=scratch, env={**os.environ, **(env or {})})
    root = psutil.Process(process.pid)
    try:
        started = time.monotonic()
        while not answers(ready):
            if process.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
                raise RuntimeError(f"{name} did not start: {log_file.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        log(f"{name} up in {time.monotonic() - started:.1f} s ({url})")
        yield Server(name, url, {"server": lambda: tree(root)}, config)
    finally:
        stop_tree(root)


def answers(ready: Callable[[], bool]) -> bool:
    try:
        return ready()
    except requests.RequestException:
        return False


def stop_tree(root: psutil.Process) -> None:
    """SIGTERM to the process and all its descendants; SIGKILL to what is left after 15 s."""
    procs = tree(root)
    for proc in reversed(procs):
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=10)


def fastapi(artifact: Path, workers: int, threads: int, scratch: Path, nodelay: bool = True, loop: str = "auto"):
    """bench/fastapi_app.py under `uvicorn --workers N`, ready once every worker has loaded the model.
    nodelay=False: uvicorn's own protocol, to measure the Nagle / delayed-ACK stall; loop: uvicorn's
    --loop ("auto": uvloop where installed, which sets TCP_NODELAY itself; "asyncio")."""
    port = free_port()
    ready_dir = scratch / f"fastapi-ready-{port}"
    ready_dir.mkdir()
    url = f"http://127.0.0.1:{port}"
    cmd = [PY, "-m", "uvicorn", "fastapi_app:create_app", "--factory", "--app-dir", str(BENCH), "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers), "--loop", loop, "--log-level", "warning", "--no-access-log", "--lifespan", "off"]
    cmd += ["--http", "fastapi_app:NoDelayProtocol"] if nodelay else ["--http", "httptools"]
    config = {"workers": workers, "event_loops": workers, "torch_threads": threads, "tcp_nodelay_protocol": nodelay, "http": "httptools",
              "loop": loop, "batching": None}
    name = f"fastapi-{workers}worker{'s' if workers > 1 else ''}" + ("" if nodelay else f"-no-nodelay-protocol-{loop}")
    return process_server(name, cmd, url, lambda: len(list(ready_dir.iterdir())) >= workers and requests.get(url + "/ping", timeout=2).ok,
                          scratch, config, env={"BENCH_ARTIFACT": str(artifact), "BENCH_READY_DIR": str(ready_dir),
                                                "BENCH_TORCH_THREADS": str(threads)})


def litserve(artifact: Path, workers: int, threads: int, max_batch_size: int, batch_timeout_s: float, scratch: Path,
             fast_queue: bool = True):
    """bench/litserve_app.py, ready once /health answers (LitServe opens it after every worker is set up)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [PY, str(BENCH / "litserve_app.py"), "--artifact", str(artifact), "--port", str(port), "--workers", str(workers),
           "--max-batch-size", str(max_batch_size), "--batch-timeout", str(batch_timeout_s), "--fast-queue", str(int(fast_queue)),
           "--torch-threads", str(threads)]
    config = {"workers_per_device": workers, "torch_threads": threads, "max_batch_size": max_batch_size,
              "batch_timeout_s": batch_timeout_s, "fast_queue": fast_queue, "tcp_nodelay": True}
    return process_server("litserve", cmd, url, lambda: requests.get(url + "/health", timeout=2).ok, scratch, config)
