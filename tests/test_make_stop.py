"""`make stop` against stand-ins for TorchServe's frontend, never a real server of anyone else's: a
private TMPDIR holds the pid file (`torchserve --stop` and the recipe both read it there), and a
private PROM_HOME keeps Prometheus' pid file out of the way. A stand-in carries TorchServe's frontend
class name in its command line, as `torchserve --stop` requires before it signals a pid."""

import os
import subprocess
import sys
import time

import pytest

from sentiment.ops.torchserve import FRONTEND, ROOT

STOP_WAIT = 1  # s, instead of the recipe's 20


@pytest.fixture
def frontend(tmp_path):
    """`frontend(ignore_sigterm)`: a stand-in process registered in tmp_path's pid file; killed at the end."""
    started = []

    def start(ignore_sigterm: bool) -> subprocess.Popen:
        handler = "signal.SIG_IGN" if ignore_sigterm else "signal.SIG_DFL"
        process = subprocess.Popen([sys.executable, "-c", f"import signal, time; signal.signal(signal.SIGTERM, {handler}); "
                                    "print('ready', flush=True); time.sleep(120)", FRONTEND], stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline() == "ready\n"  # its SIGTERM handler is set
        (tmp_path / ".model_server.pid").write_text(str(process.pid))
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=10)


def make_stop(tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "stop", f"STOP_WAIT={STOP_WAIT}", f"PROM_HOME={tmp_path / 'prometheus'}"],
                          cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=60)


def test_make_stop_fails_when_torchserve_does_not_exit(frontend, tmp_path):
    stubborn = frontend(ignore_sigterm=True)
    run = make_stop(tmp_path)
    assert stubborn.poll() is None, "the stand-in should have outlived its SIGTERM"
    assert run.returncode != 0, run.stdout + run.stderr
    assert f"TorchServe (pid {stubborn.pid}) is still running {STOP_WAIT} s after torchserve --stop" in run.stderr


def test_make_stop_succeeds_once_torchserve_exited(frontend, tmp_path):
    """The stand-in ends on SIGTERM and stays a zombie (its parent, this test, does not reap it): that is gone."""
    polite = frontend(ignore_sigterm=False)
    started = time.monotonic()
    run = make_stop(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert polite.wait(timeout=5) == -15
    assert time.monotonic() - started < 10
