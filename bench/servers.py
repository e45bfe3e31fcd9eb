"""The servers under test and their lifecycles: each is started on free loopback ports, waited
for, and stopped with its whole process tree before the benchmark moves on.

    torchserve(store, config)   a private TorchServe (LocalTorchServe) on a copy of the archive
    naive_server(...)           bench/naive_app.py: FastAPI + uvicorn, one process
"""

import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import requests

from common import BENCH, MODEL, PY, log
from local_server import AdminError, LocalTorchServe, free_port
from measure import tree

PREWARM_REQUESTS = 100  # sent one by one after each (re-)registration, before any warm-up


# ---------------------------------------------------------------- TorchServe

@contextmanager
def torchserve(store: Path, config: dict | None = None):
    """A private TorchServe (LocalTorchServe: free ports, its own TMPDIR and TEMP) serving the store's
    archive; `config` overrides config.properties."""
    # The grid re-registers the archive with other batching: this private server needs the model-control
    # API whatever config.properties ships (allowed_urls still limits it to the private store).
    ts = LocalTorchServe(store, models=f"{MODEL}.mar", config={"enable_model_api": "true", **(config or {})})
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


def ts_groups(ts: LocalTorchServe) -> dict:
    """The JVM, and its model workers."""
    return {"frontend": lambda: [ts.frontend] if ts.frontend else [], "workers": ts.workers}


# ---------------------------------------------------------------- the naive FastAPI app

def naive_server(model_dir: Path, scratch: Path, nodelay: bool):
    """bench/naive_app.py on the extracted archive `model_dir`; (process, base URL) once it answers."""
    port = free_port()
    log_file = scratch / f"naive_app_{port}.log"
    with log_file.open("w") as out:
        process = subprocess.Popen([PY, str(BENCH / "naive_app.py"), "--port", str(port), "--nodelay", str(int(nodelay)),
                                    "--model-dir", str(model_dir)], stdout=out, stderr=subprocess.STDOUT)
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

