"""Start and stop a private TorchServe for tests, benchmarks and scripts: free loopback ports,
its own TMPDIR (TorchServe keeps one pid file per temp dir), logs outside the work tree, and a
stop that leaves no JVM or worker behind. `TorchServeAdmin` is the one client of the management
API (describe, wait for workers, scale, register, set-default, unregister): every LocalTorchServe
has one (`ts.admin`), and `TorchServeAdmin("http://127.0.0.1:8081")` talks to `make serve`'s."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

from sentiment.ops.properties import read_properties

ROOT = Path(__file__).resolve().parents[2]
TORCHSERVE = Path(sys.executable).with_name("torchserve")
LOG_CONFIG = ROOT / "log4j2.xml"  # what `make serve` starts TorchServe with
FRONTEND, WORKER = "org.pytorch.serve.ModelServer", "model_service_worker"  # in the command lines of the JVM and of a worker


def bearer(key_file: Path | None, api: str) -> dict:
    """The Authorization header for `api` ("inference" or "management") when TorchServe runs with token
    authorization (it then writes key_file.json, mode 0600, in its working directory); none otherwise.
    Read at each call: TorchServe replaces a key when asked (GET /token) and keys expire."""
    if key_file is None or not key_file.exists():
        return {}
    return {"Authorization": f"Bearer {json.loads(key_file.read_text())[api]['key']}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AdminError(RuntimeError):
    """A management API call answered with an error status; the message holds TorchServe's answer."""

    def __init__(self, response: requests.Response):
        super().__init__(f"{response.request.method} {response.url}: HTTP {response.status_code} {response.text[:500]}")
        self.status_code = response.status_code


class TorchServeAdmin:
    """The management API of one TorchServe, by URL: `TorchServeAdmin(ts.management).scale(2)`.

    Every call that changes the server is synchronous (TorchServe's `synchronous=true`) and raises
    AdminError with TorchServe's answer if refused; `request()` is the unchecked call beneath them.
    """

    def __init__(self, management: str, model: str = "sentiment", key_file: Path | None = None):
        self.management, self.model, self.key_file = management.rstrip("/"), model, key_file

    def request(self, method: str, path: str, params: dict | None = None, timeout: float = 120) -> requests.Response:
        return requests.request(method, self.management + path, params=params, timeout=timeout,
                                headers=bearer(self.key_file, "management"))

    def call(self, method: str, path: str, params: dict | None = None, timeout: float = 120):
        """The answer's JSON (None if it has none); AdminError if TorchServe refused."""
        response = self.request(method, path, params, timeout)
        if not response.ok:
            raise AdminError(response)
        try:
            return response.json()
        except ValueError:
            return None

    @staticmethod
    def path(model: str, version: str | None = None) -> str:
        return f"/models/{model}" + (f"/{version}" if version else "")

    def models(self) -> list[str]:
        """Names of the registered models."""
        return [m["modelName"] for m in self.call("GET", "/models", timeout=10)["models"]]

    def describe(self, model: str | None = None, version: str | None = None) -> list[dict]:
        """One description per version (the default version only, unless `version` is given; "all": every one)."""
        return self.call("GET", self.path(model or self.model, version), timeout=10)

    def workers(self, model: str | None = None, version: str | None = None) -> list[dict]:
        """The workers (id, pid, status, ...) of the described version(s)."""
        return [w for described in self.describe(model, version) for w in described["workers"]]

    def ready_pids(self, model: str | None = None, version: str | None = None) -> set[int]:
        return {w["pid"] for w in self.workers(model, version) if w["status"] == "READY"}

    def ready_workers(self, model: str | None = None, version: str | None = None) -> int:
        return sum(w["status"] == "READY" for w in self.workers(model, version))

    def wait_workers(self, count: int, model: str | None = None, version: str | None = None,
                     exclude: set[int] = frozenset(), timeout: float = 60) -> float:
        """Wait until exactly `count` workers are listed and READY, none of them a pid in `exclude`
        (a killed worker can stay listed for a moment). Returns the seconds waited."""
        started = time.monotonic()
        while True:
            try:
                listed = self.workers(model, version)
                pids = {w["pid"] for w in listed if w["status"] == "READY"}
                if len(listed) == count and len(pids) == count and not pids & set(exclude):
                    return time.monotonic() - started
            except (requests.RequestException, AdminError, ValueError, KeyError, TypeError):
                pass
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{model or self.model}: not {count} READY workers after {timeout} s")
            time.sleep(0.2)

    def scale(self, count: int, model: str | None = None, version: str | None = None, timeout: float = 120) -> list[dict]:
        """min_worker = max_worker = count; returns the description once exactly `count` workers are READY."""
        self.call("PUT", self.path(model or self.model, version), timeout=timeout,
                  params={"min_worker": count, "max_worker": count, "synchronous": "true"})
        self.wait_workers(count, model, version, timeout=timeout)
        return self.describe(model, version)

    def register(self, url: str, model: str | None = None, batch_size: int | None = None, max_batch_delay: int | None = None,
                 initial_workers: int | None = None, timeout: float = 120) -> dict:
        """Register an archive of the model store by file name (needs the model-control API).
        Unset batching and worker settings come from the archive's model-config.yaml."""
        params = {"url": url, "model_name": model, "batch_size": batch_size, "max_batch_delay": max_batch_delay,
                  "initial_workers": initial_workers, "synchronous": "true"}
        return self.call("POST", "/models", {k: v for k, v in params.items() if v is not None}, timeout)

    def set_default(self, version: str, model: str | None = None) -> dict:
        return self.call("PUT", self.path(model or self.model, version) + "/set-default")

    def unregister(self, model: str | None = None, version: str | None = None) -> dict:
        return self.call("DELETE", self.path(model or self.model, version))


def server_processes(homes: set[str] | None = None) -> list[psutil.Process]:
    """TorchServe frontends (JVM) and Python workers on this machine; with `homes`, only those
    started from one of those LocalTorchServe homes (their TMPDIR)."""
    found = []
    for proc in psutil.process_iter():
        if runs(proc, FRONTEND, WORKER):
            try:
                if homes is None or proc.environ().get("TMPDIR") in homes:
                    found.append(proc)
            except psutil.Error:
                pass
    return found


def runs(proc: psutil.Process, *marks: str) -> bool:
    """Whether the process's command line contains one of `marks` (False once it has gone)."""
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(mark in cmdline for mark in marks)


class FrontendExited(RuntimeError):
    """The frontend exited while starting (TorchServe logs only "Torchserve stopped." when it cannot bind a port)."""


class LocalTorchServe:
    """`with LocalTorchServe(model_store, models="sentiment.mar") as ts: requests.post(ts.inference + ...)`.

    `config` entries override config.properties (e.g. {"enable_model_api": "false"}).
    """

    homes: set[str] = set()  # of every instance, so a test session can check that none outlived it

    def __init__(self, model_store: Path, models: str = "sentiment.mar", config: dict | None = None, env: dict | None = None,
                 log_config: Path | None = LOG_CONFIG):
        self.model_store, self.models, self.overrides, self.extra_env = model_store, models, config or {}, env or {}
        self.log_config = log_config  # None: TorchServe's own (DEBUG frontend, access log; bench/tuning.py compares)
        self.frontend: psutil.Process | None = None
        self.configure()

    def configure(self) -> None:
        """A fresh home (TMPDIR, logs) and free ports, written into its config.properties."""
        self.home = Path(tempfile.mkdtemp(prefix="torchserve-"))
        LocalTorchServe.homes.add(str(self.home))
        self.ports = {name: free_port() for name in ("inference", "management", "metrics")}
        self.inference, self.management, self.metrics = (f"http://127.0.0.1:{p}" for p in self.ports.values())
        settings = read_properties(ROOT / "config.properties")
        settings.update(
            inference_address=self.inference,
            management_address=self.management,
            metrics_address=self.metrics,
            model_store=str(Path(self.model_store).resolve()),
            load_models=self.models,
            # Workers talk to the frontend over /tmp/.ts.sock.<port> (the JVM ignores TMPDIR), counting
            # up from 9000: a server of its own needs a range of its own.
            initial_worker_port=free_port(),
            grpc_inference_port=free_port(),
            grpc_management_port=free_port(),
        )
        settings.update(self.overrides)
        self.config_file = self.home / "config.properties"
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        self.env = {**os.environ, "TMPDIR": str(self.home), "LOG_LOCATION": str(self.home / "logs"),
                    "METRICS_LOCATION": str(self.home / "logs"), "TEMP": str(self.home), **self.extra_env}
        self.key_file = self.home / "key_file.json"  # written there (its working directory) if token authorization is on
        self.admin = TorchServeAdmin(self.management, key_file=self.key_file)

    def start(self, timeout: float = 120, attempts: int = 3) -> "LocalTorchServe":
        """Start and wait until ready. A free port can be taken by another socket (a client's ephemeral
        port) between free_port() and the JVM binding it: then the frontend exits, and the start is
        retried on new ports (at most `attempts` times), unless the caller fixed the addresses."""
        for attempt in range(attempts):
            try:
                return self.start_once(timeout)
            except FrontendExited:
                if attempt == attempts - 1 or any(k.endswith("_address") for k in self.overrides):
                    raise
                self.configure()
        raise AssertionError("unreachable")

    def start_once(self, timeout: float) -> "LocalTorchServe":
        self.frontend = None
        log_config = ["--log-config", str(self.log_config)] if self.log_config else []
        started = subprocess.run([str(TORCHSERVE), "--start", "--ncs", "--ts-config", str(self.config_file), *log_config],
                                 env=self.env, cwd=self.home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pid_file = self.home / ".model_server.pid"
        if started.returncode != 0:  # it may have launched the JVM all the same: stop() finds it by its pid file
            try:
                self.frontend = psutil.Process(int(pid_file.read_text()))
            except (OSError, ValueError, psutil.Error):
                pass
            self.stop()
            raise RuntimeError(f"torchserve --start exited with {started.returncode}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.frontend is None and pid_file.exists() and pid_file.read_text().strip():
                try:
                    self.frontend = psutil.Process(int(pid_file.read_text().strip()))
                except psutil.NoSuchProcess:
                    self.stop()
                    raise FrontendExited(self.log()[-1000:]) from None
            if self.ready():
                return self
            if "Load model failed" in self.log():
                break
            if self.frontend is not None and not self.frontend.is_running():
                log = self.log()[-1000:]
                self.stop()
                raise FrontendExited(log)
            time.sleep(0.5)
        logs = self.log()[-2000:] + "\n" + self.log("model_log.log")[-2000:]
        self.stop()
        raise RuntimeError(f"TorchServe did not become ready in {timeout} s; logs:\n{logs}")

    def ready(self) -> bool:
        """/ping answers Healthy and every registered model has a READY worker."""
        try:
            if requests.get(self.inference + "/ping", timeout=2, headers=bearer(self.key_file, "inference")).json().get("status") != "Healthy":
                return False
            names = self.admin.models()
            return bool(names) and all(self.admin.ready_workers(name) > 0 for name in names)
        except (requests.RequestException, AdminError, ValueError, KeyError, TypeError):
            return False

    def log(self, name: str = "ts_log.log") -> str:
        path = self.home / "logs" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def workers(self) -> list[psutil.Process]:
        """The model workers (not the short-lived system-metrics collector the frontend also forks)."""
        return [proc for proc in (self.frontend.children(recursive=True) if self.frontend else []) if runs(proc, WORKER)]

    def stop(self) -> None:
        """`torchserve --stop`, then kill whatever of this server's process tree is left."""
        if not self.home.exists():
            return
        tree = []
        if self.frontend is not None and self.frontend.is_running():
            tree = [self.frontend] + self.frontend.children(recursive=True)
        subprocess.run([str(TORCHSERVE), "--stop"], env=self.env, cwd=self.home,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        _, alive = psutil.wait_procs(tree, timeout=20)
        for proc in alive:
            proc.kill()
        psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> "LocalTorchServe":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
