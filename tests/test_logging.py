"""TorchServe runs with the repository's log4j2.xml (`make serve`, LocalTorchServe): the frontend at
INFO, the workers' own log, no access log and no metric log files. A config log4j2 cannot parse is
not an error to TorchServe: it falls back to logging nothing at all, which only a test notices."""

import time

import requests


def test_server_logs_as_log4j2_xml_says(server):
    assert requests.post(server.inference + "/predictions/sentiment", json={"text": ""}, timeout=10).status_code == 400
    logs = server.home / "logs"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "answered 400 (empty_text)" not in server.log("model_log.log"):
        time.sleep(0.2)
    assert "answered 400 (empty_text)" in server.log("model_log.log")  # the handler's own line, from the worker
    ts_log = server.log()
    assert "Model server started" in ts_log or "Torchserve version" in ts_log, ts_log[:500]
    assert "[DEBUG]" not in ts_log
    assert not any((logs / name).exists() for name in ("access_log.log", "ts_metrics.log", "model_metrics.log")), sorted(p.name for p in logs.iterdir())
