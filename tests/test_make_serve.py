"""README's front door as a newcomer runs it: `make serve`, every curl of README.md, `make stop`, then
`make serve VERSION=2`: the real Makefile and commands on this checkout, not a harness equivalent.

README's ports (8080-8082) are used when they are free, and the curls then run exactly as written; when
something else holds them (a developer's own `make serve`), the Makefile's INFERENCE_PORT /
MANAGEMENT_PORT / METRICS_PORT move this server and only the curls' ports are rewritten. Each server
gets its own TMPDIR (where TorchServe keeps its pid file) and LOGS, so a developer's server is left alone.
"""

import json
import os
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

import quick_v2
from sentiment.ops.torchserve import ROOT, free_port
from sentiment.serving.signature import Signature
from test_readme import EXPLANATION_EXAMPLE, PREDICTION_EXAMPLE, README, Curl, blocks, check_prediction, without_comments

# Every curl of README.md: its ```bash blocks and the explanation's ```sh block.
README_CURLS = [line for language, body in blocks(without_comments(README)) if language in ("bash", "sh")
                for line in body.splitlines() if line.startswith("curl ")]
DEFAULT_PORTS = {"INFERENCE_PORT": 8080, "MANAGEMENT_PORT": 8081, "METRICS_PORT": 8082,
                 "GRPC_INFERENCE_PORT": 7070, "GRPC_MANAGEMENT_PORT": 7071}


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TorchServe's listener does
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ports() -> dict[str, int]:
    """README's ports if all are free, else free ones."""
    if all(port_is_free(p) for p in DEFAULT_PORTS.values()):
        return dict(DEFAULT_PORTS)
    return {name: free_port() for name in DEFAULT_PORTS}


class MakeServer:
    """`make serve ARGS` and `make stop` in ROOT with a private TMPDIR and LOGS, the ports chosen above."""

    def __init__(self, tmp: Path, *args: str):
        self.ports = ports()
        self.tmpdir = tmp / "tmp"
        self.tmpdir.mkdir()
        self.args = [*args, f"LOGS={tmp / 'logs'}", *(f"{k}={v}" for k, v in self.ports.items() if v != DEFAULT_PORTS[k])]
        # as a user's shell runs make: no MAKEFLAGS/MAKELEVEL from a `make test` around this test
        outer_make = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")
        self.env = {**{k: v for k, v in os.environ.items() if k not in outer_make}, "TMPDIR": str(self.tmpdir)}
        self.processes: list[psutil.Process] = []

    def make(self, *targets: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["make", *targets, *self.args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def curl(self, command: str) -> tuple[int, str]:
        """The command as written (ports rewritten only if they had to move); HTTP status and body."""
        for name, default in DEFAULT_PORTS.items():
            command = command.replace(f"http://127.0.0.1:{default}", f"http://127.0.0.1:{self.ports[name]}")
        result = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (command, result.stderr)
        body, _, status = result.stdout.rpartition("\n")
        return int(status), body

    def started_processes(self) -> list[psutil.Process]:
        """TorchServe's frontend (pid file) and every process under it (the workers)."""
        frontend = psutil.Process(int((self.tmpdir / ".model_server.pid").read_text()))
        return [frontend, *frontend.children(recursive=True)]

    def alive(self) -> list[psutil.Process]:
        return [p for p in self.processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@contextmanager
def make_serve(tmp: Path, *args: str):
    """`make serve ARGS` must succeed and report healthy; on the way out the server is stopped whatever happened."""
    server = MakeServer(tmp, *args)
    result = server.make("serve")
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "TorchServe is healthy" in result.stdout, result.stdout
        server.processes = server.started_processes()
        yield server
    finally:
        if not server.processes and (server.tmpdir / ".model_server.pid").exists():
            try:
                server.processes = server.started_processes()
            except psutil.NoSuchProcess:  # it exited on its own (e.g. refused its configuration)
                pass
        if server.alive():
            server.make("stop", timeout=60)
            for process in server.alive():
                process.kill()


def assert_is_readme_explanation(answer: dict) -> None:
    assert set(answer) == set(EXPLANATION_EXAMPLE), answer
    for key, shown in EXPLANATION_EXAMPLE.items():
        if key in ("base", "logit"):
            assert round(answer[key], 6) == shown, (key, answer[key])
        elif key == "tokens":
            assert [{**t, "contribution": round(t["contribution"], 4)} for t in answer[key]] == shown, answer[key]
        elif key != "completeness_error":
            assert answer[key] == shown, (key, answer[key])
    assert answer["completeness_error"] < 1e-9


def test_make_serve_answers_every_readme_curl_then_make_stop_ends_it(tmp_path, export_dir):
    signature = Signature.load(export_dir)
    with make_serve(tmp_path) as server:
        answers = [server.curl(command) for command in README_CURLS]
        stopped = server.make("stop", timeout=60)
        left = server.alive()
    assert len(README_CURLS) >= 5
    for command, (status, body) in zip(README_CURLS, answers):
        assert status == 200, (command, body)
        curl = Curl.parse(command)
        if curl.explains:  # README shows this answer, "base, logit and contributions rounded (to 6 and 4 decimals)"
            assert_is_readme_explanation(json.loads(body))
        else:
            check_prediction(curl, json.loads(body), "1", signature)
    # "The answer, one line of compact JSON": README shows the first command's real answer
    assert answers[0][1] == json.dumps(PREDICTION_EXAMPLE, separators=(",", ":"))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not left, f"make stop left TorchServe processes running: {[p.pid for p in left]}"


def full_v2_is_built() -> bool:
    return (ROOT / "build" / "v2" / "export" / "signature.json").exists() and (ROOT / "model_store" / "sentiment_v2.mar").exists()


def test_make_serve_version_2_serves_v2_by_default_and_v1_beside_it(tmp_path, export_dir):
    """With the full transformer when it is built; otherwise the tests' quick one (tests/quick_v2.py: the
    same pipeline cut to a few steps) through the Makefile's BUILD, STORE, TRAIN_ARGS and EXPORT_ARGS."""
    if full_v2_is_built():
        args = ["VERSION=2"]
    else:
        quick_v2.build()
        args = ["VERSION=2", f"BUILD={quick_v2.BUILD}", f"STORE={quick_v2.STORE}", f"TRAIN_ARGS={quick_v2.TRAIN_ARGS}", f"EXPORT_ARGS={quick_v2.EXPORT_ARGS}"]
    one_review = README_CURLS[0]
    with make_serve(tmp_path, *args) as server:
        default = server.curl(one_review)
        v1 = server.curl(one_review.replace("/predictions/sentiment", "/predictions/sentiment/1"))
        stopped = server.make("stop", timeout=60)
        left = server.alive()
    assert default[0] == 200 and json.loads(default[1])["model_version"] == "2", default
    assert v1[0] == 200 and json.loads(v1[1]) == PREDICTION_EXAMPLE, v1
    assert stopped.returncode == 0 and not left, (stopped.stdout + stopped.stderr, left)


def test_make_serve_token_on_guards_management_and_the_make_targets_send_its_key(tmp_path, export_dir):
    """`make serve TOKEN=on`: TorchServe's token authorization with its key file in KEY_DIR (outside the tree,
    owner-only); a management call without the key is refused, `make scale` and `make status` send it."""
    key_file = tmp_path / "keys" / "key_file.json"
    scale_to_1 = "curl -s -X PUT 'http://127.0.0.1:8081/models/sentiment?min_worker=1&max_worker=1&synchronous=true'"
    with make_serve(tmp_path, "TOKEN=on", f"KEY_DIR={key_file.parent}") as server:
        mode = key_file.stat().st_mode & 0o777
        without_key = server.curl(scale_to_1)
        scaled, status = server.make("scale", "N=1"), server.make("status")
        stopped = server.make("stop", timeout=60)
    assert mode == 0o600
    assert without_key[0] == 400 and "Token Authorization failed" in without_key[1], without_key
    assert scaled.returncode == 0 and "Workers scaled to 1" in scaled.stdout, scaled.stdout
    (description,) = json.loads(status.stdout[status.stdout.index("\n[") + 1:])  # after make's echo of the command
    assert [w["status"] for w in description["workers"]] == ["READY"], description
    assert stopped.returncode == 0 and not key_file.exists(), stopped.stdout + stopped.stderr
